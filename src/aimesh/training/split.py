"""How a training job holds rows out for its metrics, written as one short spec.

- ``random:0.2``: a random fifth of the rows (seeded by the job's ``seed``), stratified by
  the target when it holds classes (a classifier; for a function trainer, a target that is
  not floating point) and every class has two rows or more.
- ``random:0.2:unstratified``: the same, never stratified.
- ``column:is_test``: the rows where the column ``is_test`` is true (or non-zero).
- ``column:fold=3``: the rows where the column ``fold`` equals ``3`` (read as its type).

A split column is never a feature: the model is trained and served without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aimesh.errors import JobRejected

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = ["Rows", "Split", "split_rows"]

_SYNTAX = "random:FRACTION[:unstratified], column:NAME or column:NAME=VALUE"


@dataclass(frozen=True)
class Split:
    """Which rows a job holds out for its metrics."""

    kind: Literal["random", "column"] = "random"
    fraction: float = 0.2
    """The share of rows held out at random (``random``)."""
    stratify: bool = True
    """Whether a random split keeps the classes' proportions (``random``)."""
    column: str | None = None
    """The column that marks the held-out rows (``column``)."""
    value: str | None = None
    """The value of ``column`` that marks them; None: true or non-zero (``column``)."""

    def __post_init__(self) -> None:
        if self.kind == "random" and not 0 < self.fraction < 1:
            raise JobRejected(f"split fraction must be in (0, 1), not {self.fraction!r}")
        if (self.kind == "column") != bool(self.column):
            raise JobRejected(f"only a column split names a column: {_SYNTAX}")

    @classmethod
    def parse(cls, spec: str) -> Split:
        """The split written ``spec``; :class:`JobRejected` naming the syntax when malformed."""
        kind, _, rest = spec.strip().partition(":")
        if kind == "random":
            fraction, _, option = rest.partition(":")
            if option not in ("", "unstratified"):
                raise JobRejected(f"split {spec!r}: unknown option {option!r}; {_SYNTAX}")
            try:
                share = float(fraction)
            except ValueError:
                raise JobRejected(f"split {spec!r}: {fraction!r} is not a fraction") from None
            return cls("random", fraction=share, stratify=option != "unstratified")
        if kind == "column":
            column, equals, value = rest.partition("=")
            if not column.strip():
                raise JobRejected(f"split {spec!r} names no column; {_SYNTAX}")
            return cls("column", column=column.strip(), value=value.strip() if equals else None)
        raise JobRejected(f"split {spec!r} must be {_SYNTAX}")

    def __str__(self) -> str:
        if self.kind == "column":
            return f"column:{self.column}" + ("" if self.value is None else f"={self.value}")
        return f"random:{self.fraction}" + ("" if self.stratify else ":unstratified")


@dataclass(frozen=True)
class Rows:
    """Feature matrix and target of one side of a split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def split_rows(
    table: pa.Table, target: str, split: Split, *, seed: int, classes: bool | None, dataset: str
) -> tuple[Rows, Rows, list[str]]:
    """Train rows, test rows and the feature names of ``table``.

    ``classes`` says whether the target holds classes (None: judge by its type).
    """
    features = _features(table, target, split, dataset)
    if split.column is not None:
        test = _marked(table, split.column, split.value, dataset)
    else:
        test = _random(table, target, split, seed, classes, dataset)
    train_rows = _rows(table.filter(_not(test)), target, features)
    test_rows = _rows(table.filter(test), target, features)
    if len(train_rows) == 0 or len(test_rows) == 0:
        side = "no training" if len(train_rows) == 0 else "no held-out"
        raise JobRejected(f"split {split} of {dataset} leaves {side} rows")
    return train_rows, test_rows, features


def _features(table: pa.Table, target: str, split: Split, dataset: str) -> list[str]:
    import pyarrow as pa

    columns = table.column_names
    if target not in columns:
        raise JobRejected(
            f"dataset {dataset} has no target column {target!r}; its columns: {', '.join(columns)}"
        )
    if split.column is not None and split.column not in columns:
        raise JobRejected(
            f"dataset {dataset} has no split column {split.column!r}; "
            f"its columns: {', '.join(columns)}"
        )
    if split.column == target:
        raise JobRejected(f"the split column {target!r} is the target")
    if table.num_rows < 10:
        raise JobRejected(f"dataset {dataset} has {table.num_rows} rows; training needs 10+")
    features = [c for c in columns if c not in (target, split.column)]
    if not features:
        raise JobRejected(f"dataset {dataset} has no feature column besides {target!r}")
    bad = [
        c
        for c in features
        if not (
            pa.types.is_integer(table.schema.field(c).type)
            or pa.types.is_floating(table.schema.field(c).type)
            or pa.types.is_boolean(table.schema.field(c).type)
        )
    ]
    if bad:
        raise JobRejected(f"dataset {dataset}: non-numeric feature columns {', '.join(bad)}")
    return features


def _rows(table: pa.Table, target: str, features: list[str]) -> Rows:
    import numpy as np

    x = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in features]
    )
    return Rows(x, table.column(target).to_numpy(zero_copy_only=False))


def _not(mask: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    return pc.invert(mask)


def _marked(table: pa.Table, name: str, value: str | None, dataset: str) -> pa.Array:
    """The test-row mask of a column split: ``name`` equals ``value``, or is true."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    if column.null_count:
        raise JobRejected(
            f"split column {name!r} of {dataset} has {column.null_count} empty values"
        )
    if value is not None:
        try:
            wanted = pa.scalar(value).cast(column.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise JobRejected(
                f"split value {value!r} does not fit column {name!r} ({column.type}): {exc}"
            ) from exc
        return pc.equal(column, wanted)
    if pa.types.is_boolean(column.type):
        return column
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return pc.not_equal(column, pa.scalar(0).cast(column.type))
    raise JobRejected(
        f"split column {name!r} is {column.type}: name the test value "
        f"(column:{name}=VALUE) or use a boolean or numeric column"
    )


def _random(
    table: pa.Table, target: str, split: Split, seed: int, classes: bool | None, dataset: str
) -> pa.Array:
    """The test-row mask of a random split."""
    import numpy as np
    import pyarrow as pa
    from sklearn.model_selection import train_test_split

    y = table.column(target).to_numpy(zero_copy_only=False)
    if classes is None:
        classes = not pa.types.is_floating(table.schema.field(target).type)
    stratify = None
    if split.stratify and classes:
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.min() >= 2 else None
    try:
        _, test_index = train_test_split(
            np.arange(len(y)), test_size=split.fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise JobRejected(f"cannot split {dataset}: {exc}") from exc
    mask = np.zeros(len(y), dtype=bool)
    mask[test_index] = True
    return pa.array(mask)

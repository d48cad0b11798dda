"""The ``training`` job kind: read a snapshot, fit, evaluate, save with skops, register."""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aimesh.errors import InvalidRequest, JobRejected, NotFound

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from aimesh.config import Settings
    from aimesh.jobs import JobContext
    from aimesh.registry import ModelVersion, Registry

__all__ = ["KIND", "TrainRequest", "parse_params", "resolve_trainer", "train_job"]

KIND = "training"
"""The job kind training runs as: ``aimesh worker training``."""

Scalar = bool | int | float | str


@dataclass(frozen=True)
class TrainRequest:
    """A training job's payload, checked."""

    model: str
    dataset: str
    trainer: str
    target: str
    params: dict[str, Scalar] = field(default_factory=dict)
    test_size: float = 0.2
    alias: str | None = None
    seed: int = 0

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainRequest:
        """The request in ``payload``; :class:`JobRejected` when it is malformed."""
        missing = [k for k in ("model", "dataset", "trainer", "target") if not payload.get(k)]
        if missing:
            raise JobRejected(f"training payload lacks {', '.join(missing)}")
        strings = {k: payload[k] for k in ("model", "dataset", "trainer", "target")}
        for key, value in strings.items():
            if not isinstance(value, str):
                raise JobRejected(f"training payload: {key} must be a string, not {value!r}")
        params = payload.get("params") or {}
        if not isinstance(params, dict) or not all(
            isinstance(v, bool | int | float | str) for v in params.values()
        ):
            raise JobRejected("training payload: params must map names to scalars")
        test_size = payload.get("test_size", 0.2)
        if (
            isinstance(test_size, bool)
            or not isinstance(test_size, int | float)
            or not 0 < test_size < 1
        ):
            raise JobRejected(f"training payload: test_size must be in (0, 1), not {test_size!r}")
        alias = payload.get("alias")
        if alias is not None and not isinstance(alias, str):
            raise JobRejected(f"training payload: alias must be a string, not {alias!r}")
        seed = payload.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise JobRejected(f"training payload: seed must be an integer, not {seed!r}")
        return cls(
            model=strings["model"],
            dataset=strings["dataset"],
            trainer=strings["trainer"],
            target=strings["target"],
            params=dict(params),
            test_size=float(test_size),
            alias=alias,
            seed=seed,
        )

    def payload(self) -> dict[str, Any]:
        """The JSON payload of a job for this request."""
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "trainer": self.trainer,
            "target": self.target,
            "params": dict(self.params),
            "test_size": self.test_size,
            "seed": self.seed,
        }
        if self.alias is not None:
            out["alias"] = self.alias
        return out


def _scalar(text: str) -> Scalar:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return text  # keep as text: payload values are scalars
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_params(items: list[str] | tuple[str, ...]) -> dict[str, Scalar]:
    """``["max_iter=300", "C=0.5", "fit_intercept=false"]`` -> typed values."""
    params: dict[str, Scalar] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"parameter {item!r} must be written name=value")
        params[key.strip()] = _scalar(value)
    return params


def resolve_trainer(trainer: str) -> type[Any]:
    """The estimator class of ``sklearn:ClassName`` or ``module.path:Name``."""
    module_name, sep, name = trainer.partition(":")
    if not sep or not module_name or not name:
        raise JobRejected(f"trainer {trainer!r} must be sklearn:ClassName or module.path:ClassName")
    if module_name == "sklearn":
        from sklearn.utils import all_estimators

        found = dict(all_estimators()).get(name)
        if found is None:
            raise JobRejected(f"unknown trainer {trainer!r}: sklearn has no estimator {name!r}")
        estimator: type[Any] = found
        return estimator
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise JobRejected(f"unknown trainer {trainer!r}: {exc}") from exc
    if not isinstance(obj, type) or not hasattr(obj, "fit"):
        raise JobRejected(f"trainer {trainer!r} is not an estimator class (no fit method)")
    return obj


def _code_version() -> str:
    try:
        return importlib.metadata.version("aimesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _split_columns(table: pa.Table, target: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    import pyarrow as pa

    if target not in table.column_names:
        raise JobRejected(
            f"dataset {dataset} has no target column {target!r}; "
            f"its columns: {', '.join(table.column_names)}"
        )
    if table.num_rows < 10:
        raise JobRejected(f"dataset {dataset} has {table.num_rows} rows; training needs 10+")
    features = [c for c in table.column_names if c != target]
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
    x = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in features]
    )
    y = table.column(target).to_numpy(zero_copy_only=False)
    return x, y


def _metrics(estimator: Any, x: np.ndarray, y: np.ndarray, classifier: bool) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics

    predicted = estimator.predict(x)
    out: dict[str, float] = {}
    if classifier:
        classes = np.unique(y)
        out["accuracy"] = float(metrics.accuracy_score(y, predicted))
        binary = len(classes) == 2
        out["f1"] = float(
            metrics.f1_score(y, predicted, average="binary" if binary else "macro", pos_label=1)
            if binary and 1 in classes
            else metrics.f1_score(y, predicted, average="macro")
        )
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(x)
            out["log_loss"] = float(metrics.log_loss(y, proba, labels=estimator.classes_))
            if binary:
                out["auc"] = float(metrics.roc_auc_score(y, proba[:, 1]))
        elif binary and hasattr(estimator, "decision_function"):
            out["auc"] = float(metrics.roc_auc_score(y, estimator.decision_function(x)))
    else:
        out["rmse"] = float(math.sqrt(metrics.mean_squared_error(y, predicted)))
        out["mae"] = float(metrics.mean_absolute_error(y, predicted))
        out["r2"] = float(metrics.r2_score(y, predicted))
    return {k: v for k, v in out.items() if math.isfinite(v)}


class _Stopped(RuntimeError):
    """The job was cancelled or its worker stops: the worker decides what becomes of it."""


def _check(ctx: JobContext) -> None:
    if ctx.cancelled:
        raise _Stopped("training stopped")


def train(
    request: TrainRequest,
    settings: Settings,
    *,
    ctx: JobContext | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Run ``request`` end to end; the job's result."""
    import numpy as np
    import skops.io as sio
    from sklearn.base import is_classifier
    from sklearn.model_selection import train_test_split

    from aimesh.lake import DatasetRef, open_lake
    from aimesh.registry import open_registry
    from aimesh.registry.types import check_model_name

    def progress(fraction: float, message: str) -> None:
        if ctx is not None:
            _check(ctx)
            ctx.progress(fraction, message)

    try:
        check_model_name(request.model)
    except InvalidRequest as exc:
        raise JobRejected(str(exc)) from exc
    trainer_cls = resolve_trainer(request.trainer)
    try:
        estimator = trainer_cls(**request.params)
    except TypeError as exc:
        raise JobRejected(f"trainer {request.trainer}: bad parameters: {exc}") from exc

    progress(0.05, f"reading {request.dataset}")
    lake = open_lake(settings)
    try:
        ref = lake.pin(DatasetRef.parse(request.dataset))
        table = lake.read(ref.name, ref.version)
    except NotFound as exc:
        raise JobRejected(str(exc)) from exc
    x, y = _split_columns(table, request.target, str(ref))

    classifier = bool(is_classifier(estimator))
    stratify = None
    if classifier:
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.min() >= 2 else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=request.test_size, random_state=request.seed, stratify=stratify
        )
    except ValueError as exc:
        raise JobRejected(f"cannot split {ref}: {exc}") from exc

    progress(0.2, f"fitting {request.trainer} on {len(y_train)} rows of {ref}")
    try:
        estimator.fit(x_train, y_train)
    except ValueError as exc:  # sklearn's parameter and data validation
        raise JobRejected(f"{request.trainer} cannot fit {ref}: {exc}") from exc

    progress(0.7, f"evaluating on {len(y_test)} rows")
    scores = _metrics(estimator, x_test, y_test, classifier)

    progress(0.8, f"registering {request.model}")
    with tempfile.TemporaryDirectory(prefix="aimesh-train-") as folder:
        path = Path(folder) / f"{request.model}.skops"
        sio.dump(estimator, path)
        # This worker made the file itself, so scikit-learn's own types in it are trusted;
        # a type from anywhere else stays untrusted and the push refuses it (trust is the
        # user's call, at push time, never a worker's).
        trusted = [
            name
            for name in sio.get_untrusted_types(file=path)
            if name.split(".", 1)[0] in _OWN_LIBRARIES
        ]
        registry = open_registry(settings)
        try:
            version = _push(registry, request, path, ref, scores, job_id, trusted)
        finally:
            registry.close()
    progress(1.0, f"registered {request.model}@{version.version}")
    return {"model": request.model, "version": version.version, "metrics": scores}


def _push(
    registry: Registry,
    request: TrainRequest,
    path: Path,
    ref: object,
    scores: dict[str, float],
    job_id: str | None,
    trusted: list[str],
) -> ModelVersion:
    from aimesh.registry import Lineage, push_model

    return push_model(
        registry,
        request.model,
        path,
        framework="sklearn",
        aliases=[request.alias] if request.alias else [],
        metrics=scores,
        lineage=Lineage(
            dataset=str(ref),
            trainer=request.trainer,
            params=dict(request.params),
            code_version=_code_version(),
            job_id=job_id,
        ),
        trusted_types=trusted,
    )


_OWN_LIBRARIES = frozenset({"sklearn", "numpy", "scipy"})


def train_job(ctx: JobContext) -> dict[str, Any]:
    """The ``training`` job handler (a plain function: the worker runs it in a thread)."""
    from aimesh.config import load_settings

    request = TrainRequest.from_payload(ctx.payload)
    return train(request, load_settings(), ctx=ctx, job_id=ctx.job.id)

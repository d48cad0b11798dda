"""Dataset names and references: ``transactions``, ``transactions@3``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aimesh.errors import InvalidName, InvalidRequest
from aimesh.protocol import whole_number

__all__ = ["DATASET_NAME", "DatasetRef", "check_dataset_name"]

# Lower case only: a name is also a SQL table name (case-insensitive in DuckDB) and a folder
# (case-insensitive on macOS), so `Tx` and `tx` must not be two datasets.
DATASET_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,127}$")


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset name; raise :class:`InvalidName` otherwise."""
    if not DATASET_NAME.fullmatch(name):
        hint = f" (did you mean {name.lower()!r}?)" if DATASET_NAME.fullmatch(name.lower()) else ""
        raise InvalidName(
            f"invalid dataset name {name!r}: use lower-case letters, digits and _, "
            f"starting with a letter or _, at most 128 characters{hint}",
            name=name,
        )
    return name


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """A dataset, at one version or (``version=None``) at whatever is latest when read."""

    name: str
    version: int | None = None

    def __post_init__(self) -> None:
        check_dataset_name(self.name)
        if self.version is not None and self.version < 0:
            raise InvalidRequest(f"dataset version must be 0 or more, got {self.version}")

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        """``name``, ``name@N`` or ``name@latest``."""
        name, sep, version = text.strip().partition("@")
        if not sep or version == "latest":
            return cls(name)
        number = whole_number(version)
        if number is None:
            raise InvalidRequest(
                f"invalid dataset reference {text!r}: expected NAME, NAME@VERSION or NAME@latest"
            )
        return cls(name, number)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"

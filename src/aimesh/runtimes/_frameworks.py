"""Choosing a runtime by framework name, and importing its module only when asked.

Importing this package never imports a model library: each format's module (and its
library) is imported on first use, and a missing optional library becomes
RuntimeUnavailable naming the pip extra that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from aimesh.errors import ArtifactError, RuntimeUnavailable
from aimesh.protocol import Signature
from aimesh.runtimes._threads import apply_thread_cap
from aimesh.runtimes.base import Runtime, Trust


class _FormatModule(Protocol):
    """What each format's module provides."""

    def inspect(self, path: Path, trust: Trust) -> Signature: ...

    def load(self, path: Path, trust: Trust) -> Runtime: ...


@dataclass(frozen=True)
class _Format:
    module: str
    suffixes: tuple[str, ...]
    executes_code: bool
    libraries: tuple[str, ...]
    """Top-level modules the format needs, installed by ``requirement``."""
    requirement: str


_FORMATS: dict[str, _Format] = {
    "sklearn": _Format("_sklearn", (".skops",), False, ("sklearn", "skops"), "aimesh"),
    "onnx": _Format("_onnx", (".onnx",), False, ("onnxruntime",), "aimesh[onnx]"),
    "xgboost": _Format("_xgboost", (".ubj", ".json"), False, ("xgboost",), "aimesh[xgboost]"),
    "lightgbm": _Format("_lightgbm", (".txt",), False, ("lightgbm",), "aimesh[lightgbm]"),
    "python": _Format("_python", (".py",), True, (), "aimesh"),
    "pickle": _Format(
        "_pickle", (".pkl", ".pickle", ".joblib"), True, ("joblib", "sklearn"), "aimesh"
    ),
}


def frameworks() -> list[str]:
    """The framework names a runtime exists for."""
    return list(_FORMATS)


def detect_framework(path: Path) -> str | None:
    """The framework a file's extension suggests, or None when it suggests none."""
    suffix = path.suffix.lower()
    return next((name for name, fmt in _FORMATS.items() if suffix in fmt.suffixes), None)


def executes_code(framework: str) -> bool:
    """Whether loading this framework's artifacts runs code from them (so needs trust)."""
    return _format(framework).executes_code


def widened_types(trusted_types: Iterable[str]) -> list[str]:
    """The types among ``trusted_types`` that widen what skops loads beyond what aimesh
    already trusts by itself (scikit-learn's own data structures): a trust decision."""
    from aimesh.runtimes.base import SKLEARN_OWN_TYPES

    return sorted(set(trusted_types) - SKLEARN_OWN_TYPES)


def inspect_artifact(
    framework: str, path: Path, *, trusted: bool = False, trusted_types: Iterable[str] = ()
) -> Signature:
    """Check that an artifact is readable and safe under the given trust; its signature.

    Raises UnsafeArtifact (code-running formats without trust) or UntrustedTypes (skops)
    before anything in the file runs, and ArtifactError for a file its runtime cannot read.
    """
    return _module(framework, path).inspect(path, Trust(trusted, frozenset(trusted_types)))


def load_runtime(
    framework: str, path: Path, *, trusted: bool = False, trusted_types: Iterable[str] = ()
) -> Runtime:
    """Load an artifact into a runtime, under the same checks as inspect_artifact.

    The process's thread cap, if set, is applied again afterwards: a library the model
    brought in is capped before its first predict.
    """
    runtime = _module(framework, path).load(path, Trust(trusted, frozenset(trusted_types)))
    apply_thread_cap()
    return runtime


def _format(framework: str) -> _Format:
    try:
        return _FORMATS[framework]
    except KeyError:
        raise RuntimeUnavailable(
            f"unknown framework {framework!r}; known: {', '.join(_FORMATS)}",
            framework=framework,
        ) from None


def _module(framework: str, path: Path) -> _FormatModule:
    fmt = _format(framework)
    if not path.is_file():
        raise ArtifactError(f"artifact file {path.name} does not exist", framework=framework)
    try:
        module = importlib.import_module(f"{__package__}.{fmt.module}")
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in fmt.libraries:
            raise
        raise RuntimeUnavailable(
            f"the {framework} runtime needs the {missing} package: pip install '{fmt.requirement}'",
            framework=framework,
        ) from exc
    return cast(_FormatModule, module)

"""A user's Python file defining ``class Model``; loading runs that code, so it needs trust.

The class has ``load(self) -> None`` and ``predict(self, inputs) -> dict | ndarray``; an
array result becomes the output ``output-0``. Optional class attributes: ``signature``, a
dict ``{"inputs": [...], "outputs": [...]}`` of TensorSpec fields (without it, inputs pass
through unchecked), and ``batchable`` (default False: rows are not assumed independent).
"""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from aimesh.errors import ArtifactError
from aimesh.protocol import Signature
from aimesh.runtimes.base import Array, Trust, require_trust, take_inputs, unreadable

FRAMEWORK = "python"
SINGLE_OUTPUT = "output-0"

# Each load gets its own module name, so two versions of one model never share globals.
_module_names = itertools.count()


class PythonRuntime:
    """A loaded instance of the user's ``Model``."""

    framework = FRAMEWORK

    def __init__(self, path: Path, model: Any, signature: Signature, batchable: bool) -> None:
        self.signature = signature
        self.batchable = batchable
        self._path = path
        self._model = model

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Call ``Model.predict``, checking inputs against the declared signature if any."""
        if self.signature.inputs:
            feed = take_inputs(self.signature.inputs, inputs)
        else:
            feed = {name: np.asarray(value) for name, value in inputs.items()}
        result = self._model.predict(feed)
        if isinstance(result, np.ndarray):
            return {SINGLE_OUTPUT: result}
        if isinstance(result, Mapping):
            return {str(name): np.asarray(value) for name, value in result.items()}
        raise ArtifactError(
            f"{self._path.name}: Model.predict returned a {type(result).__name__}; "
            "it must return a dict of arrays or an array",
            framework=FRAMEWORK,
        )


def inspect(path: Path, trust: Trust) -> Signature:
    """Import the trusted file and read ``Model.signature``, without calling ``load``."""
    require_trust(FRAMEWORK, path, trust)
    return _signature(path, _model_class(path))


def load(path: Path, trust: Trust) -> PythonRuntime:
    """Import the trusted file, then create the ``Model`` and call its ``load``."""
    require_trust(FRAMEWORK, path, trust)
    model_class = _model_class(path)
    signature = _signature(path, model_class)
    try:
        model = model_class()
        model.load()
    # The user's code can raise anything; it all means this model cannot be served.
    except Exception as exc:
        raise ArtifactError(
            f"{path.name}: Model.load failed: {type(exc).__name__}: {exc}", framework=FRAMEWORK
        ) from exc
    return PythonRuntime(path, model, signature, bool(getattr(model_class, "batchable", False)))


def _model_class(path: Path) -> type[Any]:
    try:
        # Named by the file's name only: a SyntaxError's text must not carry a server path.
        code = compile(path.read_bytes(), path.name, "exec")
    except (OSError, SyntaxError, ValueError) as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    # Compiled by hand rather than imported: the artifact may have no .py suffix, and an
    # import would write a __pycache__ folder into the artifact store.
    module = types.ModuleType(f"aimesh_python_model_{next(_module_names)}")
    module.__file__ = str(path)
    # Present in sys.modules while it runs, as dataclasses and typing look classes up there.
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        raise ArtifactError(
            f"{path.name}: running the model file failed: {type(exc).__name__}: {exc}",
            framework=FRAMEWORK,
        ) from exc
    finally:
        del sys.modules[module.__name__]
    model_class = module.__dict__.get("Model")
    if not isinstance(model_class, type):
        raise ArtifactError(f"{path.name} defines no class Model", framework=FRAMEWORK)
    missing = [
        name for name in ("load", "predict") if not callable(getattr(model_class, name, None))
    ]
    if missing:
        raise ArtifactError(
            f"{path.name}: class Model lacks the method(s) {', '.join(missing)}",
            framework=FRAMEWORK,
        )
    return model_class


def _signature(path: Path, model_class: type[Any]) -> Signature:
    declared = getattr(model_class, "signature", None)
    if declared is None:
        return Signature()
    try:
        return Signature.model_validate(declared)
    except ValidationError as exc:
        raise ArtifactError(
            f"{path.name}: Model.signature is invalid: {exc}", framework=FRAMEWORK
        ) from exc

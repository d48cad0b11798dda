"""What every runtime is, and the input checks they all share.

A runtime holds one loaded model and predicts on numpy arrays keyed by tensor name. It
knows nothing of servers: the model service, batch workers and sidecars all host one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from aimesh.errors import ArtifactError, InvalidRequest, UnsafeArtifact, foreign_message
from aimesh.protocol import DATATYPE_TO_NUMPY, Signature, TensorSpec

Array = npt.NDArray[Any]


class Runtime(Protocol):
    """A loaded model that predicts on named numpy arrays."""

    framework: str
    signature: Signature
    batchable: bool
    """True when rows are independent, so requests may be merged into one batch."""

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Outputs by name for inputs by name; raises InvalidRequest for bad inputs."""
        ...


SKLEARN_OWN_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        *(
            f"sklearn.metrics._dist_metrics.{metric}Distance{bits}"
            for metric in ("Euclidean", "Manhattan", "Chebyshev", "Minkowski")
            for bits in ("64", "32")
        ),
    }
)
"""scikit-learn's own data structures (trees, neighbour indexes, optimiser state, distance
metrics), rebuilt from plain arrays. skops leaves them off its default list, which would
refuse every forest, boosted, neighbours and MLP model; aimesh trusts them by itself, so
they are no trust decision of the caller's."""


@dataclass(frozen=True)
class Trust:
    """What the caller vouches for: running the artifact's code, and extra skops types."""

    code: bool = False
    types: frozenset[str] = field(default_factory=frozenset)


def require_trust(framework: str, path: Path, trust: Trust) -> None:
    """Refuse a format that runs the artifact's code unless the caller trusts it."""
    if not trust.code:
        raise UnsafeArtifact(
            f"{path.name}: the {framework} format runs code from the artifact when it loads; "
            "refusing it without explicit trust (trust only artifacts from a known source)",
            framework=framework,
        )


def unreadable(framework: str, path: Path, exc: BaseException) -> ArtifactError:
    """The error for a file the library could not read; use as ``raise ... from exc``."""
    # Native libraries append C++ stack traces to their messages (and name the file by its
    # server path, an upload's temp file): the first line says it, without the paths.
    reason = foreign_message(exc)
    return ArtifactError(
        f"{path.name} is not a readable {framework} model: {reason}", framework=framework
    )


def take_inputs(specs: list[TensorSpec], inputs: Mapping[str, Array]) -> dict[str, Array]:
    """The declared inputs, checked and converted to their declared datatypes."""
    names = [spec.name for spec in specs]
    missing = [name for name in names if name not in inputs]
    if missing:
        raise InvalidRequest(f"missing input {missing}; the model takes {names}")
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise InvalidRequest(f"unknown input {unknown}; the model takes {names}")
    return {spec.name: coerce(spec, inputs[spec.name]) for spec in specs}


def coerce(spec: TensorSpec, value: Array) -> Array:
    """``value`` with the spec's datatype, refusing shapes and lossy casts it does not fit."""
    array = np.asarray(value)
    if not spec.accepts_shape(array.shape):
        raise InvalidRequest(
            f"input {spec.name!r} has shape {list(array.shape)}; "
            f"the model expects {spec.shape} (-1: any size)"
        )
    target = DATATYPE_TO_NUMPY[spec.datatype]
    if array.dtype == target:
        return array
    if spec.datatype == "BYTES":
        if array.dtype.kind in "USO":
            return array
    elif array.dtype.kind == "O":
        # Decoded JSON can arrive as Python objects; convert them if they are numbers.
        try:
            return array.astype(target)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(
                f"input {spec.name!r} holds values that are not {spec.datatype}"
            ) from exc
    elif np.can_cast(array.dtype, target, casting="same_kind"):
        # Widening and same-kind narrowing (FP64 -> FP32) are what clients expect;
        # float -> int would silently truncate, so it is refused below.
        return array.astype(target)
    raise InvalidRequest(
        f"input {spec.name!r} has numpy dtype {array.dtype}, "
        f"which does not convert to {spec.datatype}"
    )


def empty_outputs(signature: Signature) -> dict[str, Array]:
    """Zero-row outputs, for an empty batch that some libraries refuse to predict on."""
    return {
        spec.name: np.empty(
            [0 if dim == -1 else dim for dim in spec.shape], DATATYPE_TO_NUMPY[spec.datatype]
        )
        for spec in signature.outputs
    }

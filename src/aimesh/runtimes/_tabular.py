"""The tabular convention shared by the sklearn, pickle, xgboost and lightgbm runtimes.

One input ``input-0`` (FP64, [-1, n_features]). Classifiers give ``label`` and
``probabilities``, or only ``label`` when the model has no probabilities; regressors give
``prediction``. A runtime is a raw predict function plus a head that names its output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from aimesh.errors import ArtifactError, InvalidRequest
from aimesh.protocol import DATATYPE_TO_NUMPY, Datatype, Signature, TensorSpec, datatype_of
from aimesh.runtimes.base import Array, empty_outputs, take_inputs

INPUT = "input-0"


class Head(Protocol):
    """Turns a library's raw prediction into named outputs."""

    def specs(self) -> list[TensorSpec]:
        """The outputs this head gives."""
        ...

    def outputs(self, raw: Any) -> dict[str, Array]:
        """Named outputs for one raw prediction."""
        ...


@dataclass(frozen=True)
class Probabilities:
    """A classifier's class probabilities, and the label of the most probable class."""

    classes: Array

    def specs(self) -> list[TensorSpec]:
        """``label`` [-1] and ``probabilities`` [-1, n_classes]."""
        return [
            TensorSpec(name="label", datatype=label_datatype(self.classes), shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP64", shape=[-1, len(self.classes)]),
        ]

    def outputs(self, raw: Any) -> dict[str, Array]:
        """Labels derived from the probabilities, so the model runs once per request."""
        proba = np.asarray(raw, dtype=np.float64)
        if proba.ndim == 1:
            # Binary boosters give only P(class 1).
            proba = np.column_stack((1.0 - proba, proba))
        return {"label": self.classes.take(proba.argmax(axis=1)), "probabilities": proba}


@dataclass(frozen=True)
class Labels:
    """A classifier's predicted labels, for models without probabilities."""

    datatype: Datatype

    def specs(self) -> list[TensorSpec]:
        """``label`` [-1]."""
        return [TensorSpec(name="label", datatype=self.datatype, shape=[-1])]

    def outputs(self, raw: Any) -> dict[str, Array]:
        """The labels, with the declared datatype (boosters give class indices as floats)."""
        label = np.asarray(raw)
        if self.datatype != "BYTES":
            label = label.astype(DATATYPE_TO_NUMPY[self.datatype], copy=False)
        return {"label": label}


@dataclass(frozen=True)
class Prediction:
    """A regressor's prediction, one value per row (or one per target)."""

    targets: int = 1

    def specs(self) -> list[TensorSpec]:
        """``prediction`` [-1], or [-1, targets] for multi-target models."""
        shape = [-1] if self.targets == 1 else [-1, self.targets]
        return [TensorSpec(name="prediction", datatype="FP64", shape=shape)]

    def outputs(self, raw: Any) -> dict[str, Array]:
        """The prediction as FP64."""
        return {"prediction": np.asarray(raw, dtype=np.float64)}


def label_datatype(classes: Array) -> Datatype:
    """The protocol datatype of a classifier's labels."""
    try:
        return datatype_of(classes.dtype)
    except ValueError as exc:
        raise ArtifactError(f"the model's classes have an unsupported dtype: {exc}") from exc


class TabularRuntime:
    """A tabular model: one FP64 matrix in, the outputs of its head out."""

    batchable = True

    def __init__(
        self,
        framework: str,
        n_features: int | None,
        head: Head,
        predict_raw: Callable[[Array], Any],
    ) -> None:
        self.framework = framework
        self.signature = Signature(
            inputs=[TensorSpec(name=INPUT, datatype="FP64", shape=[-1, n_features or -1])],
            outputs=head.specs(),
        )
        self._head = head
        self._predict_raw = predict_raw

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Predict on the rows of ``input-0``."""
        matrix = take_inputs(self.signature.inputs, inputs)[INPUT]
        if matrix.shape[0] == 0:
            return empty_outputs(self.signature)
        try:
            raw = self._predict_raw(matrix)
        except ValueError as exc:
            # These libraries raise ValueError for inputs they refuse (NaN, infinity,
            # feature count), which is the caller's mistake, not the server's.
            raise InvalidRequest(f"the {self.framework} model refused the input: {exc}") from exc
        return self._head.outputs(raw)

"""Inference requests and responses of the Open Inference Protocol v2, in memory.

Tensors hold numpy arrays, already decoded: the REST and gRPC codecs build these from
their wire formats, and a pipeline runner or a batch worker builds them directly, with no
HTTP in between. Plain slotted dataclasses, because they are made on every request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aimesh.errors import DatatypeMismatch, InputMismatch, ShapeMismatch
from aimesh.protocol.tensors import Datatype, TensorSpec

Parameters = dict[str, Any]
"""Protocol ``parameters``: string keys to str, int, float or bool values."""


@dataclass(slots=True)
class Tensor:
    """A named tensor with its datatype; ``data`` has the tensor's shape.

    For BYTES, ``data`` is an object array of ``bytes``.
    """

    name: str
    datatype: Datatype
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        """The tensor's shape as the protocol writes it."""
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asks for, with its parameters (e.g. ``binary_data``)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """What a client asks a model: named input tensors, optionally which outputs to return."""

    inputs: list[Tensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None


@dataclass(slots=True)
class InferenceResponse:
    """What a model answers: the model and version that answered, and output tensors."""

    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class ServerMetadata:
    """``GET /v2``: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ModelMetadata:
    """``GET /v2/models/{name}``: versions served, platform, and the tensors taken and given."""

    name: str
    platform: str
    versions: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: Parameters = field(default_factory=dict)


def check_inputs(model: str, specs: Sequence[TensorSpec], inputs: Sequence[Tensor]) -> None:
    """Refuse ``inputs`` unless they are the tensors ``specs`` name, with their datatypes and
    shapes (-1: any size); no ``specs`` (a model without a signature) accepts anything.

    The one check of a request against a model's signature: the model service runs it on
    every call, the gateway on an async call before it queues the job.
    """
    if not specs:
        return
    wanted = {spec.name: spec for spec in specs}
    given = {tensor.name: tensor for tensor in inputs}
    missing = sorted(wanted.keys() - given.keys())
    unknown = sorted(given.keys() - wanted.keys())
    if missing or unknown:
        raise InputMismatch(
            f"model {model} takes inputs {sorted(wanted)}; "
            + (f"missing {missing}" if missing else f"unknown {unknown}")
        )
    for name, tensor in given.items():
        spec = wanted[name]
        if tensor.datatype != spec.datatype:
            raise DatatypeMismatch(
                f"input {name} must be {spec.datatype}, got {tensor.datatype}", input=name
            )
        if not spec.accepts_shape(tensor.data.shape):
            got = list(tensor.data.shape)
            raise ShapeMismatch(
                f"input {name} must have shape {spec.shape} (-1: any), got {got}", input=name
            )

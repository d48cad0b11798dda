"""ONNX models run by onnxruntime on the CPU (``.onnx``); loading runs no Python code.

Inputs and outputs keep the graph's names; dynamic dimensions become -1. Only tensors
cross the Open Inference Protocol, so a non-tensor output (skl2onnx's ZipMap, a sequence
of maps) is left out of the signature and never computed: convert classifiers with
``options={"zipmap": False}`` to serve their probabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from pydantic import ValidationError

from aimesh.errors import ArtifactError, InvalidRequest
from aimesh.protocol import Datatype, Signature, TensorSpec
from aimesh.runtimes._threads import thread_cap
from aimesh.runtimes.base import Array, Trust, take_inputs, unreadable

FRAMEWORK = "onnx"
logger = logging.getLogger(__name__)

_DATATYPES: dict[str, Datatype] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxRuntime:
    """An onnxruntime session over the graph's tensor inputs and outputs."""

    framework = FRAMEWORK
    skipped_outputs: dict[str, str]
    """Outputs left out of the signature because they are not tensors: name -> ONNX type."""

    def __init__(self, session: Any, signature: Signature, skipped: dict[str, str]) -> None:
        self.signature = signature
        self.skipped_outputs = skipped
        # Rows are independent only if every tensor is batched along a dynamic first axis.
        self.batchable = all(
            spec.shape[:1] == [-1] for spec in [*signature.inputs, *signature.outputs]
        )
        self._session = session
        self._output_names = [spec.name for spec in signature.outputs]

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the graph on the named inputs."""
        feed = take_inputs(self.signature.inputs, inputs)
        try:
            values = self._session.run(self._output_names, feed)
        except InvalidArgument as exc:
            raise InvalidRequest(f"the onnx model refused the input: {exc}") from exc
        return {
            name: np.asarray(value) for name, value in zip(self._output_names, values, strict=True)
        }


def inspect(path: Path, trust: Trust) -> Signature:
    """The signature of an ONNX file."""
    return load(path, trust).signature


def load(path: Path, trust: Trust) -> OnnxRuntime:
    """Open an ONNX file in a CPU session (trust is not needed: the graph holds no code)."""
    try:
        options = onnxruntime.SessionOptions()
        cap = thread_cap()
        if cap is not None:
            # onnxruntime keeps its own pools, sized by the cores unless told
            options.intra_op_num_threads = cap
            options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    # onnxruntime's errors (InvalidProtobuf, Fail, NoSuchFile...) share no base but Exception.
    except Exception as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    tensors = [arg for arg in session.get_outputs() if arg.type in _DATATYPES]
    skipped = {arg.name: arg.type for arg in session.get_outputs() if arg.type not in _DATATYPES}
    try:
        signature = Signature(
            inputs=[_spec(path, "input", arg) for arg in session.get_inputs()],
            outputs=[_spec(path, "output", arg) for arg in tensors],
        )
    except ValidationError as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    if not signature.outputs:
        raise ArtifactError(
            f"{path.name}: the onnx model has no tensor outputs "
            f"({', '.join(f'{name}: {kind}' for name, kind in skipped.items())})",
            framework=FRAMEWORK,
        )
    if skipped:
        logger.warning(
            "%s: serving without the non-tensor outputs %s (for skl2onnx classifiers, "
            "convert with options={'zipmap': False} to keep the probabilities)",
            path.name,
            skipped,
        )
    return OnnxRuntime(session, signature, skipped)


def _spec(path: Path, role: str, arg: Any) -> TensorSpec:
    datatype = _DATATYPES.get(arg.type)
    if datatype is None:
        raise ArtifactError(
            f"{path.name}: the onnx {role} {arg.name!r} has type {arg.type}; "
            "only tensors of Open Inference Protocol datatypes can be served",
            framework=FRAMEWORK,
        )
    # Symbolic ("batch") and unknown (None) dimensions both mean any size.
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or []]
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)

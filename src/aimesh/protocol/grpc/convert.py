"""Convert between the gRPC messages of the Open Inference Protocol v2 and aimesh's own types.

Server side: :func:`request_from_pb` and :func:`response_to_pb`; client side:
:func:`request_to_pb` and :func:`response_from_pb`. Tensors travel either as
``raw_*_contents`` (the raw byte layout of :mod:`aimesh.protocol.raw`, one entry per tensor,
what Triton and tritonclient use) or as typed ``InferTensorContents``. Anything malformed
raises :class:`~aimesh.errors.InvalidRequest`, and nothing else, whatever the message holds.

This is the hot path: numeric tensors are decoded with ``np.frombuffer`` (raw) or one
``np.fromiter`` (typed), never a Python loop over elements.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any, cast

import numpy as np

from aimesh.errors import InvalidRequest
from aimesh.protocol.grpc._generated.grpc_predict_v2_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataResponse,
    ServerMetadataResponse,
)
from aimesh.protocol.inference import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    ServerMetadata,
    Tensor,
)
from aimesh.protocol.raw import array_from_raw, array_to_raw, element_count
from aimesh.protocol.tensors import DATATYPE_TO_NUMPY, Datatype, TensorSpec

_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1

_CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}
"""For each datatype, the ``InferTensorContents`` field that carries it and that field's dtype."""

_NO_TYPED_CONTENTS = (
    "FP16 has no typed contents field in the gRPC protocol; send it as raw contents "
    "(raw_input_contents / raw_output_contents)"
)

_InputPb = ModelInferRequest.InferInputTensor
_OutputPb = ModelInferResponse.InferOutputTensor


# -- parameters ----------------------------------------------------------------------------


def parameters_from_pb(parameters: Mapping[str, InferParameter]) -> Parameters:
    """Read a ``map<string, InferParameter>`` into a dict of bool, int, float or str."""
    out: Parameters = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidRequest(f"parameter {key!r} has no value")
        out[key] = getattr(parameter, choice)
    return out


def parameters_to_pb(
    parameters: Mapping[str, Any], into: MutableMapping[str, InferParameter]
) -> None:
    """Write ``parameters`` into a message's ``map<string, InferParameter>`` field ``into``.

    bool, str and float map to their own choice; an int to ``int64_param``, or to
    ``uint64_param`` when only that holds it. Any other value raises InvalidRequest.
    """
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise InvalidRequest(f"parameter names must be strings, got {key!r}")
        # bool before int: True is an int to Python, but not to the protocol
        if isinstance(value, bool):
            into[key].bool_param = value
        elif isinstance(value, int):
            if _INT64[0] <= value <= _INT64[1]:
                into[key].int64_param = value
            elif 0 <= value <= _UINT64_MAX:
                into[key].uint64_param = value
            else:
                raise InvalidRequest(f"parameter {key!r} = {value} does not fit in 64 bits")
        elif isinstance(value, float):
            into[key].double_param = value
        elif isinstance(value, str):
            into[key].string_param = value
        else:
            raise InvalidRequest(
                f"parameter {key!r} must be a bool, int, float or str, got {type(value).__name__}"
            )


# -- requests and responses ----------------------------------------------------------------


def request_from_pb(pb: ModelInferRequest) -> InferenceRequest:
    """Decode a ``ModelInferRequest`` (server side); ``model_name``/``version`` stay on ``pb``."""
    outputs: list[RequestedOutput] | None = None
    if len(pb.outputs):  # none requested means all of them, as in REST
        _check_unique((requested.name for requested in pb.outputs), "requested output")
        outputs = [
            RequestedOutput(requested.name, parameters_from_pb(requested.parameters))
            for requested in pb.outputs
        ]
    return InferenceRequest(
        inputs=_tensors_from_pb(pb.inputs, pb.raw_input_contents, "input"),
        id=pb.id or None,
        parameters=parameters_from_pb(pb.parameters),
        outputs=outputs,
    )


def response_from_pb(pb: ModelInferResponse) -> InferenceResponse:
    """Decode a ``ModelInferResponse`` (client side)."""
    return InferenceResponse(
        model_name=pb.model_name,
        outputs=_tensors_from_pb(pb.outputs, pb.raw_output_contents, "output"),
        model_version=pb.model_version or None,
        id=pb.id or None,
        parameters=parameters_from_pb(pb.parameters),
    )


def request_to_pb(
    request: InferenceRequest, *, model_name: str, model_version: str = "", raw: bool = True
) -> ModelInferRequest:
    """Encode a request for ``model_name`` (client side); typed contents when ``raw`` is false."""
    pb = ModelInferRequest(model_name=model_name, model_version=model_version, id=request.id or "")
    parameters_to_pb(request.parameters, pb.parameters)
    _check_unique((tensor.name for tensor in request.inputs), "input")
    for tensor in request.inputs:
        _tensor_to_pb(tensor, pb.inputs.add(), pb.raw_input_contents if raw else None)
    if request.outputs is not None:
        _check_unique((output.name for output in request.outputs), "requested output")
        for output in request.outputs:
            parameters_to_pb(output.parameters, pb.outputs.add(name=output.name).parameters)
    return pb


def response_to_pb(response: InferenceResponse, *, raw: bool = True) -> ModelInferResponse:
    """Encode a response (server side): raw contents by default, typed when ``raw`` is false."""
    pb = ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    parameters_to_pb(response.parameters, pb.parameters)
    _check_unique((tensor.name for tensor in response.outputs), "output")
    for tensor in response.outputs:
        _tensor_to_pb(tensor, pb.outputs.add(), pb.raw_output_contents if raw else None)
    return pb


# -- metadata ------------------------------------------------------------------------------


def metadata_to_pb(metadata: ServerMetadata) -> ServerMetadataResponse:
    """Encode the server's metadata."""
    return ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=metadata.extensions
    )


def metadata_from_pb(pb: ServerMetadataResponse) -> ServerMetadata:
    """Decode the server's metadata (client side)."""
    return ServerMetadata(name=pb.name, version=pb.version, extensions=list(pb.extensions))


def model_metadata_to_pb(metadata: ModelMetadata) -> ModelMetadataResponse:
    """Encode a model's metadata; its parameters become KServe's string ``properties``.

    Strings are kept as they are; other values are written as JSON (``true``, ``3``, ``0.5``).
    """
    TensorMetadata = ModelMetadataResponse.TensorMetadata
    return ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=[
            TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in metadata.inputs
        ],
        outputs=[
            TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in metadata.outputs
        ],
        properties={
            key: value if isinstance(value, str) else json.dumps(value, default=str)
            for key, value in metadata.parameters.items()
        },
    )


def model_metadata_from_pb(pb: ModelMetadataResponse) -> ModelMetadata:
    """Decode a model's metadata (client side); ``properties`` come back as strings."""
    try:
        inputs = [
            TensorSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in pb.inputs
        ]
        outputs = [
            TensorSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in pb.outputs
        ]
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidRequest(f"model metadata holds an invalid tensor: {exc}") from exc
    return ModelMetadata(
        name=pb.name,
        platform=pb.platform,
        versions=list(pb.versions),
        inputs=inputs,
        outputs=outputs,
        parameters=dict(pb.properties),
    )


# -- tensors ------------------------------------------------------------------------------


def _check_unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidRequest(f"{what} {name!r} appears twice")
        seen.add(name)


def _datatype(datatype: str, what: str, name: str) -> Datatype:
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidRequest(f"{what} {name!r} has unknown datatype {datatype!r}")
    return cast(Datatype, datatype)


def _tensors_from_pb(
    tensors: Sequence[_InputPb | _OutputPb], raw: Sequence[bytes], what: str
) -> list[Tensor]:
    if raw and len(raw) != len(tensors):
        raise InvalidRequest(
            f"raw contents must hold one entry per {what}: "
            f"got {len(raw)} entries for {len(tensors)} {what}s"
        )
    _check_unique((tensor.name for tensor in tensors), what)
    decoded: list[Tensor] = []
    for index, tensor in enumerate(tensors):
        name = tensor.name
        datatype = _datatype(tensor.datatype, what, name)
        shape = _checked_shape(tensor.shape, what, name)
        if raw:
            # an empty contents message is harmless; elements in both places are not
            if tensor.contents.ListFields():
                raise InvalidRequest(
                    f"{what} {name!r} has typed contents, but the message also has raw "
                    "contents; use one or the other"
                )
            try:
                data = array_from_raw(datatype, shape, raw[index])
            except InvalidRequest as exc:
                raise InvalidRequest(f"{what} {name!r}: {exc.message}") from exc
        else:
            data = _from_contents(datatype, shape, tensor.contents, what, name)
        decoded.append(Tensor(name, datatype, data, parameters_from_pb(tensor.parameters)))
    return decoded


def _checked_shape(shape: Iterable[int], what: str, name: str) -> list[int]:
    dims = list(shape)
    try:
        element_count(dims)  # also refuses shapes too large for numpy to address
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what} {name!r}: {exc.message}") from exc
    return dims


def _from_contents(
    datatype: Datatype, shape: list[int], contents: InferTensorContents, what: str, name: str
) -> np.ndarray:
    if datatype not in _CONTENTS:
        raise InvalidRequest(f"{what} {name!r}: {_NO_TYPED_CONTENTS}")
    field, wire_dtype = _CONTENTS[datatype]
    for other, _ in contents.ListFields():
        if other.name != field:
            raise InvalidRequest(
                f"{what} {name!r} is {datatype}, so its elements belong in {field}, "
                f"not {other.name}"
            )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidRequest(
            f"{what} {name!r} of shape {shape} needs {count} elements, got {len(values)}"
        )
    wire = np.fromiter(values, dtype=wire_dtype, count=count)
    target = DATATYPE_TO_NUMPY[datatype]
    if target != wire_dtype:
        # INT8/16 travel as int32 and UINT8/16 as uint32: refuse what would wrap around
        info = np.iinfo(cast("np.dtype[np.integer[Any]]", target))
        if count and (int(wire.min()) < info.min or int(wire.max()) > info.max):
            raise InvalidRequest(f"{what} {name!r} holds a value outside the range of {datatype}")
        wire = wire.astype(target)
    return wire.reshape(shape)


def _tensor_to_pb(
    tensor: Tensor, pb: _InputPb | _OutputPb, raw: MutableSequence[bytes] | None
) -> None:
    datatype = _datatype(tensor.datatype, "tensor", tensor.name)
    data = np.asarray(tensor.data)
    pb.name = tensor.name
    pb.datatype = datatype
    pb.shape.extend(data.shape)
    parameters_to_pb(tensor.parameters, pb.parameters)
    if raw is not None:
        try:
            raw.append(array_to_raw(datatype, data))
        except InvalidRequest as exc:
            raise InvalidRequest(f"tensor {tensor.name!r}: {exc.message}") from exc
    else:
        _to_contents(datatype, data, pb.contents, tensor.name)


def _to_contents(
    datatype: Datatype, data: np.ndarray, contents: InferTensorContents, name: str
) -> None:
    if datatype not in _CONTENTS:
        raise InvalidRequest(f"tensor {name!r}: {_NO_TYPED_CONTENTS}")
    field, wire_dtype = _CONTENTS[datatype]
    if datatype == "BYTES":
        getattr(contents, field).extend(_bytes_elements(data, name))
        return
    target = DATATYPE_TO_NUMPY[datatype]
    if data.dtype != target and not np.can_cast(data.dtype, target, casting="same_kind"):
        raise InvalidRequest(f"tensor {name!r}: cannot send an array of {data.dtype} as {datatype}")
    # tolist() makes the Python scalars in C; extend() then copies them in one call
    wire = data.astype(target, copy=False).astype(wire_dtype, copy=False)
    getattr(contents, field).extend(wire.ravel().tolist())


def _bytes_elements(data: np.ndarray, name: str) -> list[bytes]:
    elements = data.ravel().tolist()
    for index, element in enumerate(elements):
        if isinstance(element, bytes):
            continue
        if isinstance(element, str):
            elements[index] = element.encode()
        elif isinstance(element, bytearray | memoryview):
            elements[index] = bytes(element)
        else:
            raise InvalidRequest(
                f"tensor {name!r}: BYTES element must be bytes or str, got {type(element).__name__}"
            )
    return elements


def peer_host(peer: str | None) -> str:
    """The client's address in gRPC's peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    if not peer:
        return "unknown"
    _, _, address = peer.partition(":")
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]") or "unknown"

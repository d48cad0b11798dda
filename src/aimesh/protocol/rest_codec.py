"""The REST (JSON) wire format of the Open Inference Protocol v2, without HTTP.

Bodies in, bodies out: the server decodes requests and encodes responses, metadata and
errors; the client (gateway, pipelines, benchmarks) does the reverse. The binary tensor
data extension of Triton and KServe is supported both ways: a JSON header of
``header_length`` bytes (the ``Inference-Header-Content-Length`` HTTP header) followed by
the raw bytes of every tensor whose parameters carry ``binary_data_size``, in tensor order.

Decisions, where the protocol leaves room:

- ``data`` may be flat or nested to any depth up to 32; nesting is read row-major and only
  the element count must match ``prod(shape)``. A scalar (``shape: []``) takes ``[x]`` or a
  bare ``x``. Outputs are always written flat.
- JSON values are checked against the datatype: BOOL takes only true/false, integers take
  no fractions, booleans or strings, numbers take no strings or booleans, and nothing may
  fall outside the datatype's range (FP16/FP32 included: a value that would become
  infinite is refused rather than rounded). BYTES take strings, sent as their UTF-8.
- JSON cannot carry NaN or infinity, nor BYTES that are not UTF-8. A tensor holding them is
  sent as binary data instead of JSON (the protocol's own escape hatch, which Triton and
  KServe clients read), so encoding is always lossless.
- ``binary_data_size`` is transport detail: decoding removes it from the tensor's
  parameters, encoding writes it afresh.

Every malformed body raises :class:`~aimesh.errors.InvalidRequest`, never anything else.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Iterable, Sequence
from typing import Annotated, Any, ClassVar, Final, cast

import msgspec
import numpy as np

from aimesh.errors import InvalidRequest
from aimesh.protocol.inference import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    ServerMetadata,
    Tensor,
)
from aimesh.protocol.raw import MAX_DIMS, array_from_raw, array_to_raw, as_datatype, element_count
from aimesh.protocol.tensors import DATATYPE_TO_NUMPY, Datatype, TensorSpec

DEFAULT_MAX_ELEMENTS: Final = 1 << 26
"""Elements a request may hold across its inputs (64 Mi: 512 MiB of FP64)."""

_BINARY_SIZE: Final = "binary_data_size"


# --- what a JSON element of each datatype may be ------------------------------------------


def _bounded_int(dtype: np.dtype[Any]) -> Any:
    info = np.iinfo(dtype)
    # msgspec bounds must fit an int64; above that numpy's own check reports the overflow
    upper = int(info.max) if info.max <= np.iinfo(np.int64).max else None
    return Annotated[int, msgspec.Meta(ge=int(info.min), le=upper)]


def _bounded_float(dtype: np.dtype[Any]) -> Any:
    largest = float(np.finfo(dtype).max)
    return Annotated[float, msgspec.Meta(ge=-largest, le=largest)]


_ELEMENT_TYPES: Final[dict[str, Any]] = {
    "BOOL": bool,
    "BYTES": str,
    **{
        name: _bounded_int(dtype)
        for name, dtype in DATATYPE_TO_NUMPY.items()
        if name.startswith(("INT", "UINT"))
    },
    # msgspec already refuses doubles that overflow to infinity
    "FP16": _bounded_float(DATATYPE_TO_NUMPY["FP16"]),
    "FP32": _bounded_float(DATATYPE_TO_NUMPY["FP32"]),
    "FP64": float,
}


# --- the JSON shapes on the wire ----------------------------------------------------------
#
# Decoding tries the typed shapes first: one tensor struct per datatype, tagged by the
# "datatype" field, whose flat "data" msgspec checks and converts in one pass. Anything
# they refuse (nested or scalar data, and every malformed body) is read again through the
# general shapes, which keep "data" raw until the datatype is known and say what is wrong.


class _TypedTensorIn(msgspec.Struct, tag_field="datatype"):
    name: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None
    wire_datatype: ClassVar[str]


_TYPED_TENSORS: Final = tuple(
    msgspec.defstruct(
        f"_{datatype}TensorIn",
        [("data", types.GenericAlias(list, (element,)) | None, None)],
        bases=(_TypedTensorIn,),
        tag=datatype,
        namespace={"wire_datatype": datatype},
    )
    for datatype, element in _ELEMENT_TYPES.items()
)
_TYPED_TENSOR_LIST: Final = types.GenericAlias(list, (typing.Union.__getitem__(_TYPED_TENSORS),))


class _TensorIn(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    # an empty Raw means the field was absent
    data: msgspec.Raw = msgspec.Raw()


class _RequestedOutputWire(msgspec.Struct, omit_defaults=True):
    name: str
    parameters: dict[str, Any] | None = None


class _RequestIn(msgspec.Struct):
    inputs: list[_TensorIn]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_RequestedOutputWire] | None = None


class _ResponseIn(msgspec.Struct):
    model_name: str
    outputs: list[_TensorIn]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None


_TypedRequestIn: Final = msgspec.defstruct(
    "_TypedRequestIn",
    [
        ("inputs", _TYPED_TENSOR_LIST),
        ("id", str | None, None),
        ("parameters", dict[str, Any] | None, None),
        ("outputs", list[_RequestedOutputWire] | None, None),
    ],
)
_TypedResponseIn: Final = msgspec.defstruct(
    "_TypedResponseIn",
    [
        ("model_name", str),
        ("outputs", _TYPED_TENSOR_LIST),
        ("model_version", str | None, None),
        ("id", str | None, None),
        ("parameters", dict[str, Any] | None, None),
    ],
)


class _TensorOut(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class _RequestOut(msgspec.Struct, omit_defaults=True):
    inputs: list[_TensorOut]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_RequestedOutputWire] | None = None


class _ResponseOut(msgspec.Struct, omit_defaults=True):
    model_name: str
    outputs: list[_TensorOut]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None


class _ServerMetadataOut(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class _MetadataTensorOut(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class _ModelMetadataOut(msgspec.Struct, omit_defaults=True):
    name: str
    versions: list[str]
    platform: str
    inputs: list[_MetadataTensorOut]
    outputs: list[_MetadataTensorOut]
    parameters: dict[str, Any] | None = None


class _ErrorOut(msgspec.Struct):
    error: str


_TYPED_REQUEST_DECODER: Final = msgspec.json.Decoder(_TypedRequestIn)
_TYPED_RESPONSE_DECODER: Final = msgspec.json.Decoder(_TypedResponseIn)
_REQUEST_DECODER: Final = msgspec.json.Decoder(_RequestIn)
_RESPONSE_DECODER: Final = msgspec.json.Decoder(_ResponseIn)
_ENCODER: Final = msgspec.json.Encoder()

# the faulty-input exceptions msgspec can raise: bad JSON or schema, invalid UTF-8 inside a
# string, and nesting deeper than the interpreter's stack
_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _is_utf8(data: memoryview | bytes) -> bool:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _why_undecodable(data: memoryview | bytes, exc: BaseException) -> str:
    """aimesh's own words for why msgspec refused ``data``; msgspec's detail in brackets.

    Only the kind of fault is decided here (and tested): the library's wording, which
    changes between releases, is passed on as detail and never matched.
    """
    if not len(data):
        return "the body is empty"
    if not _is_utf8(data):
        return "it is not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, msgspec.ValidationError):
        return f"it does not follow the protocol's schema ({exc})"
    return f"it is not valid JSON ({exc})"


# --- reading "data" -----------------------------------------------------------------------

_DATA_DECODERS: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}


def _data_decoder(datatype: str, depth: int) -> msgspec.json.Decoder[Any]:
    """A decoder for ``data`` of ``datatype`` nested ``depth`` lists deep (0: a scalar)."""
    decoder = _DATA_DECODERS.get((datatype, depth))
    if decoder is None:
        wire_type = _ELEMENT_TYPES[datatype]
        for _ in range(depth):
            wire_type = types.GenericAlias(list, (wire_type,))
        decoder = _DATA_DECODERS[datatype, depth] = msgspec.json.Decoder(wire_type)
    return decoder


_WHITESPACE: Final = frozenset(b" \t\r\n")


def _nesting_depth(raw: msgspec.Raw) -> int:
    """How many ``[`` open the JSON value: the depth of list its decoder must expect."""
    depth = 0
    for byte in memoryview(raw):
        if byte == 0x5B:  # "["
            depth += 1
            if depth > MAX_DIMS:
                raise InvalidRequest(f"data is nested deeper than {MAX_DIMS} levels")
        elif byte not in _WHITESPACE:
            break
    return depth


def _values_from_raw(datatype: str, raw: msgspec.Raw) -> tuple[Any, int]:
    """The decoded ``data`` and its nesting depth; InvalidRequest on a type mismatch."""
    depth = _nesting_depth(raw)
    try:
        return _data_decoder(datatype, depth).decode(raw), depth
    except _DECODE_ERRORS as exc:
        if datatype == "BYTES" and not _is_utf8(raw):
            raise InvalidRequest(
                "BYTES data is not valid UTF-8, which JSON cannot carry: send such bytes "
                "as binary data (parameters.binary_data_size)"
            ) from None
        if isinstance(exc, msgspec.ValidationError):
            raise InvalidRequest(
                f"{datatype} data holds a value {datatype} does not take ({exc})"
            ) from None
        why = _why_undecodable(raw, exc)
        raise InvalidRequest(f"{datatype} data is not valid: {why}") from None


def _array_from_values(
    datatype: Datatype, shape: list[int], count: int, values: Any, depth: int
) -> np.ndarray:
    """An array of ``shape`` from decoded (type-checked) JSON values, nested ``depth`` deep."""
    if datatype == "BYTES":
        for _ in range(depth - 1):
            values = [item for inner in values for item in inner]
        texts: list[str] = values if depth else [values]
        if len(texts) != count:
            raise InvalidRequest(f"shape {shape} needs {count} elements, data holds {len(texts)}")
        array = np.empty(count, dtype=object)
        # elements are bytes in memory; JSON strings carry them as UTF-8
        array[:] = [text.encode() for text in texts]
        return array.reshape(shape)
    try:
        array = np.asarray(values, dtype=DATATYPE_TO_NUMPY[datatype])
    except OverflowError:
        raise InvalidRequest(f"{datatype} data holds a value out of range") from None
    except ValueError:
        raise InvalidRequest("nested data is ragged: inner lists differ in length") from None
    if array.size != count:
        raise InvalidRequest(f"shape {shape} needs {count} elements, data holds {array.size}")
    return array.reshape(shape)


# --- decoding tensors (requests and responses alike) -----------------------------------


def _split(body: bytes, header_length: int | None) -> tuple[memoryview, memoryview | None]:
    view = memoryview(body)
    if header_length is None:
        return view, None
    if isinstance(header_length, bool) or not 0 <= header_length <= len(view):
        raise InvalidRequest(
            f"Inference-Header-Content-Length {header_length} is not within the body's "
            f"{len(view)} bytes"
        )
    return view[:header_length], view[header_length:]


def _decode_tensors(
    wires: Sequence[_TypedTensorIn | _TensorIn],
    binary: memoryview | None,
    what: str,
    max_elements: int | None,
) -> list[Tensor]:
    tensors: list[Tensor] = []
    names: set[str] = set()
    offset = 0
    total = 0
    for wire in wires:
        if wire.name in names:
            raise InvalidRequest(f"{what} {wire.name!r} appears more than once")
        names.add(wire.name)
        datatype = _datatype_of(wire, what)
        try:
            count = element_count(wire.shape)
            total += count
            if max_elements is not None and total > max_elements:
                raise InvalidRequest(f"request holds over {max_elements} elements, the limit")
            parameters = wire.parameters or {}
            size = parameters.pop(_BINARY_SIZE, None)
            has_data = (
                wire.data is not None if isinstance(wire, _TypedTensorIn) else bool(wire.data)
            )
            if size is None:
                if not has_data:
                    raise InvalidRequest("has neither data nor parameters.binary_data_size")
                if isinstance(wire, _TypedTensorIn):
                    values, depth = wire.data, 1
                else:
                    values, depth = _values_from_raw(datatype, wire.data)
                data = _array_from_values(datatype, wire.shape, count, values, depth)
            else:
                if has_data:
                    raise InvalidRequest("has both data and parameters.binary_data_size")
                chunk = _binary_chunk(binary, offset, size)
                data = array_from_raw(datatype, wire.shape, chunk)
                offset += len(chunk)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{what} {wire.name!r}: {exc.message}") from None
        tensors.append(Tensor(wire.name, datatype, data, parameters))
    if binary is not None and offset != len(binary):
        raise InvalidRequest(
            f"body has {len(binary) - offset} bytes after the JSON header that no {what} claims"
        )
    return tensors


def _datatype_of(wire: _TypedTensorIn | _TensorIn, what: str) -> Datatype:
    if isinstance(wire, _TypedTensorIn):
        return cast(Datatype, wire.wire_datatype)
    if wire.datatype not in DATATYPE_TO_NUMPY:
        raise InvalidRequest(
            f"{what} {wire.name!r} has unknown datatype {wire.datatype!r}; expected one of "
            + ", ".join(DATATYPE_TO_NUMPY)
        )
    return cast(Datatype, wire.datatype)


def _binary_chunk(binary: memoryview | None, offset: int, size: object) -> memoryview:
    if binary is None:
        raise InvalidRequest(
            "has binary_data_size but the body has no binary part "
            "(Inference-Header-Content-Length was not given)"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidRequest(f"binary_data_size must be a non-negative integer, got {size!r}")
    if offset + size > len(binary):
        raise InvalidRequest(
            f"binary_data_size is {size} but only {len(binary) - offset} bytes remain in the body"
        )
    return binary[offset : offset + size]


def _decode_header(header: memoryview, typed: Any, general: Any, what: str) -> Any:
    try:
        return typed.decode(header)
    except _DECODE_ERRORS:
        pass
    try:
        return general.decode(header)
    except _DECODE_ERRORS as exc:
        raise InvalidRequest(f"invalid inference {what}: {_why_undecodable(header, exc)}") from None


def decode_request(
    body: bytes, *, header_length: int | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> InferenceRequest:
    """Read an inference request body (JSON, or JSON header plus binary tensor data).

    ``header_length`` is the ``Inference-Header-Content-Length`` header, when present.
    Numeric binary inputs are read-only views of ``body``. Raises InvalidRequest for any
    malformed body, with a message naming the offending input.
    """
    header, binary = _split(body, header_length)
    wire = _decode_header(header, _TYPED_REQUEST_DECODER, _REQUEST_DECODER, "request")
    inputs = _decode_tensors(wire.inputs, binary, "input", max_elements)
    outputs = None
    if wire.outputs is not None:
        outputs = [RequestedOutput(out.name, out.parameters or {}) for out in wire.outputs]
        if len({out.name for out in outputs}) != len(outputs):
            raise InvalidRequest("a requested output appears more than once")
    return InferenceRequest(inputs, wire.id, wire.parameters or {}, outputs)


def decode_response(body: bytes, *, header_length: int | None = None) -> InferenceResponse:
    """Read an inference response body, as a client does; InvalidRequest if malformed."""
    header, binary = _split(body, header_length)
    wire = _decode_header(header, _TYPED_RESPONSE_DECODER, _RESPONSE_DECODER, "response")
    outputs = _decode_tensors(wire.outputs, binary, "output", None)
    return InferenceResponse(
        wire.model_name, outputs, wire.model_version, wire.id, wire.parameters or {}
    )


# --- encoding tensors ------------------------------------------------------------------


def _json_values(datatype: str, array: np.ndarray) -> list[Any] | None:
    """The row-major JSON values of ``array``, or None when JSON cannot hold them exactly."""
    if datatype == "BYTES":
        texts: list[Any] = []
        for element in array.ravel().tolist():
            if isinstance(element, str):
                texts.append(element)
            elif isinstance(element, bytes | bytearray | memoryview):
                try:
                    texts.append(bytes(element).decode())
                except UnicodeDecodeError:
                    return None
            else:
                raise InvalidRequest(
                    f"BYTES element must be bytes or str, got {type(element).__name__}"
                )
        return texts
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return None
    # tolist() yields Python numbers whose shortest repr round-trips the exact value
    return array.ravel().tolist()


def _encode_tensor(tensor: Tensor, binary: bool, chunks: list[bytes]) -> _TensorOut:
    array = as_datatype(tensor.datatype, tensor.data)
    parameters = tensor.parameters
    if _BINARY_SIZE in parameters:
        parameters = {k: v for k, v in parameters.items() if k != _BINARY_SIZE}
    shape = list(array.shape)
    if not binary:
        values = _json_values(tensor.datatype, array)
        if values is not None:
            return _TensorOut(tensor.name, tensor.datatype, shape, parameters or None, values)
    raw = array_to_raw(tensor.datatype, array)
    chunks.append(raw)
    return _TensorOut(tensor.name, tensor.datatype, shape, {**parameters, _BINARY_SIZE: len(raw)})


def _finish(wire: _RequestOut | _ResponseOut, chunks: list[bytes]) -> tuple[bytes, int | None]:
    try:
        header = _ENCODER.encode(wire)
    except (TypeError, ValueError) as exc:
        # an unencodable parameter value, or a str that is not valid unicode
        raise InvalidRequest(f"cannot encode as JSON: {exc}") from None
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _names(binary: bool | Collection[str]) -> bool | Collection[str]:
    if isinstance(binary, str):
        return {binary}  # a lone name, not its characters
    if isinstance(binary, bool | set | frozenset | dict):
        return binary
    return set(binary)


def encode_response(
    response: InferenceResponse, *, binary: bool | Collection[str] = False
) -> tuple[bytes, int | None]:
    """Write a response body; returns ``(body, header_length)``.

    Outputs named in ``binary`` (all when True) follow the JSON header as raw bytes; so do
    outputs JSON cannot hold exactly (NaN, infinities, non-UTF-8 BYTES). ``header_length``
    is None when the body is pure JSON, else the ``Inference-Header-Content-Length``.
    """
    names = _names(binary)
    chunks: list[bytes] = []
    outputs = [
        _encode_tensor(out, names is True or (names is not False and out.name in names), chunks)
        for out in response.outputs
    ]
    wire = _ResponseOut(
        response.model_name,
        outputs,
        response.model_version,
        response.id,
        response.parameters or None,
    )
    return _finish(wire, chunks)


def encode_request(request: InferenceRequest, *, binary: bool = False) -> tuple[bytes, int | None]:
    """Write a request body, as a client does; returns ``(body, header_length)``.

    With ``binary`` every input is sent raw after the JSON header; without, inputs JSON
    cannot hold exactly still are. Requested outputs and parameters are passed on as given.
    """
    chunks: list[bytes] = []
    inputs = [_encode_tensor(tensor, binary, chunks) for tensor in request.inputs]
    outputs = None
    if request.outputs is not None:
        outputs = [
            _RequestedOutputWire(out.name, out.parameters or None) for out in request.outputs
        ]
    wire = _RequestOut(inputs, request.id, request.parameters or None, outputs)
    return _finish(wire, chunks)


def _flag(parameters: Parameters, key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def binary_outputs_requested(request: InferenceRequest) -> bool | set[str]:
    """Which outputs the client wants as binary data: all (True), none (False), or names.

    ``parameters.binary_data_output`` sets the default; each requested output's
    ``parameters.binary_data`` overrides it. When outputs are listed, the answer is the set
    of those to send binary; otherwise it is the default for every output.
    """
    default = _flag(request.parameters, "binary_data_output", False)
    if not request.outputs:
        return default
    return {out.name for out in request.outputs if _flag(out.parameters, "binary_data", default)}


# --- metadata and errors ---------------------------------------------------------------


def _metadata_tensors(specs: Iterable[TensorSpec]) -> list[_MetadataTensorOut]:
    return [_MetadataTensorOut(spec.name, spec.datatype, list(spec.shape)) for spec in specs]


def encode_server_metadata(meta: ServerMetadata) -> bytes:
    """The body of ``GET /v2``: name, version and extensions."""
    return _ENCODER.encode(_ServerMetadataOut(meta.name, meta.version, list(meta.extensions)))


def encode_model_metadata(meta: ModelMetadata) -> bytes:
    """The body of ``GET /v2/models/{name}``; ``parameters`` only when there are some."""
    wire = _ModelMetadataOut(
        meta.name,
        list(meta.versions),
        meta.platform,
        _metadata_tensors(meta.inputs),
        _metadata_tensors(meta.outputs),
        meta.parameters or None,
    )
    try:
        return _ENCODER.encode(wire)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"cannot encode model metadata as JSON: {exc}") from None


class _MetadataTensorIn(msgspec.Struct):
    name: str
    datatype: Datatype
    shape: list[int]


class _ModelMetadataIn(msgspec.Struct):
    name: str
    inputs: list[_MetadataTensorIn] = msgspec.field(default_factory=list)


_MODEL_METADATA_DECODER: Final = msgspec.json.Decoder(_ModelMetadataIn)


def decode_model_inputs(body: bytes) -> list[TensorSpec]:
    """The inputs a ``GET /v2/models/{name}`` body names (raises :class:`InvalidRequest`)."""
    try:
        meta = _MODEL_METADATA_DECODER.decode(body)
        return [TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs]
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise InvalidRequest(f"unreadable model metadata: {exc}") from None


def encode_error(message: str) -> bytes:
    """The protocol's error body, ``{"error": message}``."""
    # an error body must always be writable, even for a message with lone surrogates
    return _ENCODER.encode(_ErrorOut(message.encode(errors="replace").decode()))

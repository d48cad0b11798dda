"""The REST codec of the Open Inference Protocol v2, JSON and binary, and tritonclient's view."""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Literal

import msgspec
import numpy as np
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aimesh.errors import InvalidRequest
from aimesh.protocol import (
    DATATYPE_TO_NUMPY,
    Datatype,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorSpec,
)
from aimesh.protocol.rest_codec import (
    binary_outputs_requested,
    decode_request,
    decode_response,
    encode_error,
    encode_model_metadata,
    encode_request,
    encode_response,
    encode_server_metadata,
)

DATATYPES: list[Datatype] = list(DATATYPE_TO_NUMPY)  # type: ignore[arg-type]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
FLOAT_WIDTHS: dict[str, Literal[16, 32, 64]] = {"FP16": 16, "FP32": 32, "FP64": 64}


@st.composite
def arrays(draw: st.DrawFn, datatype: Datatype, finite: bool = False) -> np.ndarray:
    """Any array of ``datatype``: NaN, infinities, -0.0, non-UTF-8 bytes and empty shapes."""
    shape = draw(SHAPES)
    if datatype != "BYTES":
        dtype = DATATYPE_TO_NUMPY[datatype]
        elements = None
        if finite and datatype in FLOAT_WIDTHS:
            elements = st.floats(
                allow_nan=False, allow_infinity=False, width=FLOAT_WIDTHS[datatype]
            )
        return draw(hnp.arrays(dtype, shape, elements=elements))
    count = math.prod(shape)
    texts = st.text(max_size=4).map(str.encode)
    out = np.empty(count, dtype=object)
    out[:] = draw(
        st.lists(texts if finite else st.binary(max_size=6), min_size=count, max_size=count)
    )
    return out.reshape(shape)


@st.composite
def tensor_lists(draw: st.DrawFn) -> list[Tensor]:
    datatypes = draw(st.lists(st.sampled_from(DATATYPES), min_size=1, max_size=4))
    return [Tensor(f"t{i}", dt, draw(arrays(dt))) for i, dt in enumerate(datatypes)]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal bit for bit (NaN payloads and -0.0 included), same dtype and shape."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        assert got.tobytes() == want.tobytes()


def assert_same_tensors(got: list[Tensor], want: list[Tensor]) -> None:
    assert [(t.name, t.datatype, t.parameters) for t in got] == [
        (t.name, t.datatype, t.parameters) for t in want
    ]
    for mine, theirs in zip(got, want, strict=True):
        assert_same(mine.data, theirs.data)


def json_safe(tensor: Tensor) -> bool:
    """Whether JSON can hold the tensor exactly (finite numbers, UTF-8 bytes)."""
    if tensor.datatype == "BYTES":
        try:
            for element in tensor.data.ravel().tolist():
                element.decode()
        except UnicodeDecodeError:
            return False
        return True
    return tensor.data.dtype.kind != "f" or bool(np.isfinite(tensor.data).all())


def body(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


# --- round trips ------------------------------------------------------------------------


@given(tensor_lists(), st.booleans())
def test_requests_round_trip_exactly_in_json_and_binary(inputs: list[Tensor], binary: bool) -> None:
    request = InferenceRequest(
        inputs, id="r1", parameters={"p": 1}, outputs=[RequestedOutput("o", {"binary_data": True})]
    )
    encoded, header_length = encode_request(request, binary=binary)
    # JSON is used unless asked otherwise, and falls back to binary only where it must
    all_json = not binary and all(json_safe(t) for t in inputs)
    assert (header_length is None) == all_json
    decoded = decode_request(encoded, header_length=header_length)
    assert_same_tensors(decoded.inputs, inputs)
    assert (decoded.id, decoded.parameters, decoded.outputs) == (
        request.id,
        request.parameters,
        request.outputs,
    )


@given(tensor_lists(), st.data())
def test_responses_round_trip_exactly_with_any_outputs_binary(
    outputs: list[Tensor], data: st.DataObject
) -> None:
    binary = data.draw(
        st.booleans() | st.sets(st.sampled_from([t.name for t in outputs])), label="binary"
    )
    response = InferenceResponse("m", outputs, model_version="3", id="r1")
    encoded, header_length = encode_response(response, binary=binary)
    decoded = decode_response(encoded, header_length=header_length)
    assert_same_tensors(decoded.outputs, outputs)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "r1")


def test_non_finite_and_non_utf8_outputs_fall_back_to_binary_and_the_rest_stay_json() -> None:
    response = InferenceResponse(
        "m",
        [
            Tensor("nan", "FP32", np.array([1.0, np.nan], dtype=np.float32)),
            Tensor("raw", "BYTES", np.array([b"\xff"], dtype=object)),
            Tensor("ok", "FP32", np.array([0.5], dtype=np.float32)),
        ],
    )
    encoded, header_length = encode_response(response)
    assert header_length is not None
    header = msgspec.json.decode(encoded[:header_length])
    assert [o["parameters"] for o in header["outputs"][:2]] == [
        {"binary_data_size": 8},
        {"binary_data_size": 5},
    ]
    assert header["outputs"][2]["data"] == [0.5]


def test_outputs_are_written_flat_and_fp16_as_json_numbers() -> None:
    out = Tensor("h", "FP16", np.array([[1.5, -2.0], [65504.0, 0.0]], dtype=np.float16))
    encoded, header_length = encode_response(InferenceResponse("m", [out]))
    assert header_length is None
    assert encoded == (
        b'{"model_name":"m","outputs":[{"name":"h","datatype":"FP16","shape":[2,2],'
        b'"data":[1.5,-2.0,65504.0,0.0]}]}'
    )


def test_a_lone_output_name_means_that_output_not_its_characters() -> None:
    outs = [
        Tensor("ab", "INT8", np.array([1], np.int8)),
        Tensor("a", "INT8", np.array([2], np.int8)),
    ]
    encoded, header_length = encode_response(InferenceResponse("m", outs), binary="ab")
    assert header_length is not None
    assert msgspec.json.decode(encoded[:header_length])["outputs"][1]["data"] == [2]


@pytest.mark.parametrize(
    ("datatype", "data", "shape", "want"),
    [
        ("FP32", [[1, 2, 3], [4, 5, 6]], [2, 3], np.arange(1, 7, dtype=np.float32).reshape(2, 3)),
        ("INT64", [[1, 2], [3, 4], [5, 6]], [2, 3], np.arange(1, 7).reshape(2, 3)),
        ("BYTES", [["a", "é"]], [2], np.array([b"a", "é".encode()], dtype=object)),
        ("BOOL", [[[True]], [[False]]], [2, 1, 1], np.array([True, False]).reshape(2, 1, 1)),
        ("UINT8", 7, [], np.array(7, dtype=np.uint8)),
        ("UINT8", [7], [], np.array(7, dtype=np.uint8)),
        ("BYTES", "x", [1], np.array([b"x"], dtype=object)),
        ("FP64", [], [0, 3], np.zeros((0, 3))),
        ("UINT64", [18446744073709551615], [1], np.array([2**64 - 1], dtype=np.uint64)),
        ("INT8", [-128, 127], [2], np.array([-128, 127], dtype=np.int8)),
    ],
)
def test_nested_and_scalar_data_are_read_row_major(
    datatype: str, data: Any, shape: list[int], want: np.ndarray
) -> None:
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": data}
    decoded = decode_request(body({"inputs": [tensor]}))
    assert_same(decoded.inputs[0].data, want)


def test_binary_inputs_are_views_of_the_body_and_lose_binary_data_size() -> None:
    raw = np.arange(4, dtype="<f4").tobytes()
    header = body(
        {
            "inputs": [
                {"name": "a", "shape": [1], "datatype": "BYTES", "data": ["s"]},
                {
                    "name": "b",
                    "shape": [2, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16, "keep": "me"},
                },
            ]
        }
    )
    buf = bytearray(header + raw)  # a bytes-like body: let the test see through a copy
    decoded = decode_request(buf, header_length=len(header))  # type: ignore[arg-type]
    assert decoded.inputs[1].parameters == {"keep": "me"}
    buf[len(header) : len(header) + 4] = np.float32(9).tobytes()
    assert decoded.inputs[1].data[0, 0] == 9


# --- what the client asks for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "outputs", "want"),
    [
        ({}, None, False),
        ({"binary_data_output": True}, None, True),
        ({"binary_data_output": True}, [], True),
        ({}, [RequestedOutput("a", {"binary_data": True}), RequestedOutput("b")], {"a"}),
        (
            {"binary_data_output": True},
            [RequestedOutput("a"), RequestedOutput("b", {"binary_data": False})],
            {"a"},
        ),
        ({}, [RequestedOutput("a", {"binary_data": False})], set()),
    ],
)
def test_binary_outputs_follow_the_request_default_and_each_output(
    parameters: dict[str, Any], outputs: list[RequestedOutput] | None, want: bool | set[str]
) -> None:
    request = InferenceRequest([], parameters=parameters, outputs=outputs)
    assert binary_outputs_requested(request) == want


@pytest.mark.parametrize(
    "request_",
    [
        InferenceRequest([], parameters={"binary_data_output": "yes"}),
        InferenceRequest([], outputs=[RequestedOutput("a", {"binary_data": 1})]),
    ],
)
def test_binary_flags_must_be_booleans(request_: InferenceRequest) -> None:
    with pytest.raises(InvalidRequest, match="must be true or false"):
        binary_outputs_requested(request_)


# --- malformed bodies ---------------------------------------------------------------------


def one(datatype: str = "FP32", shape: Any = (2,), **fields: Any) -> bytes:
    return body({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, **fields}]})


def with_tail(header: bytes, tail: bytes) -> tuple[bytes, int]:
    """A binary-extension body: the JSON header, then ``tail``; and the header's length."""
    return header + tail, len(header)


FP32_BINARY = one(parameters={"binary_data_size": 8})

# aimesh's own words only: the detail a library adds in brackets changes between its releases
SCHEMA = "invalid inference request: it does not follow the protocol's schema"
BAD_BODIES: list[tuple[bytes, int | None, str]] = [
    (b"", None, "invalid inference request: the body is empty"),
    (b"not json", None, "invalid inference request: it is not valid JSON"),
    (b"[]", None, SCHEMA),
    (b"{}", None, SCHEMA),
    (b'{"inputs": [{"name": "x"}]}', None, SCHEMA),
    (one("FP128", data=[1, 2]), None, "unknown datatype 'FP128'"),
    (body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}), None,
     "input 'x' appears more than once"),
    (one(shape=[-1], data=[]), None, "negative dimension"),
    (one(shape=[1.5], data=[1]), None, SCHEMA),
    (one(shape=[1 << 40, 1 << 40], data=[]), None, "too large"),
    (one(shape=[3], data=[1, 2]), None, "needs 3 elements, data holds 2"),
    (one(data=[1, "a"]), None, "input 'x': FP32 data holds a value FP32 does not take"),
    (one(data=[1, True]), None, "input 'x': FP32 data holds a value FP32 does not take"),
    (one("INT32", data=[1, 1.5]), None, "INT32 data holds a value INT32 does not take"),
    (one("INT8", data=[1, 300]), None, "INT8 data holds a value INT8 does not take"),
    (one("UINT8", data=[1, -1]), None, "UINT8 data holds a value UINT8 does not take"),
    (one("UINT64", shape=[1], data=[1 << 64]), None, "out of range"),
    (one("INT64", shape=[1], data=[1 << 63]), None, "INT64 data holds a value INT64 does not take"),
    (one("FP16", data=[1, 70000]), None, "FP16 data holds a value FP16 does not take"),
    (one("FP32", data=[1, 1e39]), None, "FP32 data holds a value FP32 does not take"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1e400]}]}', None,
     "FP64 data holds a value FP64 does not take"),
    (one("BOOL", data=[1, 0]), None, "BOOL data holds a value BOOL does not take"),
    (one("BYTES", data=[1, 2]), None, "BYTES data holds a value BYTES does not take"),
    (one(data=[[1], [2, 3]], shape=[3]), None, "ragged"),
    (one(data=[[1, 2], 3], shape=[3]), None, "FP32 data holds a value FP32 does not take"),
    (one(data=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], shape=[1]), None,
     "nested deeper than 32"),
    (one(data=None), None, "input 'x': has neither data nor"),  # null is absent
    (one(), None, "input 'x': has neither data nor parameters.binary_data_size"),
    (*with_tail(one(data=[1, 2], parameters={"binary_data_size": 8}), b"\0" * 8), "both data"),
    (FP32_BINARY, None, "no binary part"),
    (*with_tail(FP32_BINARY, b"\0" * 4), "binary_data_size is 8 but only 4 bytes remain"),
    (*with_tail(FP32_BINARY, b"\0" * 9), "1 bytes after the JSON header that no input claims"),
    (FP32_BINARY, len(FP32_BINARY) + 1, "not within the body"),
    (FP32_BINARY, -1, "not within the body"),
    (*with_tail(one(parameters={"binary_data_size": "8"}), b"\0" * 8), "non-negative integer"),
    (*with_tail(one(parameters={"binary_data_size": 4}), b"\0" * 4), "needs 8 bytes, got 4"),
    (*with_tail(one("BOOL", parameters={"binary_data_size": 2}), b"\1\7"), "other than 0 or 1"),
    (body({"inputs": [], "outputs": [{"name": "a"}, {"name": "a"}]}), None,
     "requested output appears more than once"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["\xff"]}]}', None,
     "input 'x': BYTES data is not valid UTF-8, which JSON cannot carry"),
    (b'{"inputs": [{"name": "\xff", "shape": [1], "datatype": "FP32", "data": [1]}]}', None,
     "invalid inference request: it is not valid UTF-8"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
     None, "invalid inference request: it is not valid JSON"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', None,
     "invalid inference request: it is not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("encoded", "header_length", "fragment"), BAD_BODIES)
def test_malformed_requests_are_refused_with_a_clear_message(
    encoded: bytes, header_length: int | None, fragment: str
) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(fragment)):
        decode_request(encoded, header_length=header_length)


def test_requests_above_the_element_limit_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="over 3 elements"):
        decode_request(one(shape=[2, 2], data=[1, 2, 3, 4]), max_elements=3)


# --- nothing but InvalidRequest, whatever the bytes -------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
ELEMENT_KINDS = [
    st.integers(-300, 300),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=2),
]
ELEMENTS = st.one_of(ELEMENT_KINDS)
# well-formed enough to get past the schema into the checks behind it (most lists hold one
# kind of element, as real data does)
DATA = st.one_of(
    [st.lists(kind, max_size=6) for kind in ELEMENT_KINDS]
    + [st.lists(st.lists(ELEMENTS, max_size=3), max_size=3), ELEMENTS]
)
PLAUSIBLE_TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b"]),
        "shape": st.lists(st.integers(-1, 3), max_size=2),
        "datatype": st.sampled_from([*DATATYPES, "FP8"]),
    },
    optional={
        "data": DATA,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 12) | JSON_VALUES}
        ),
    },
)
GARBLED_TENSORS = st.fixed_dictionaries(
    {},
    optional={"name": JSON_VALUES, "shape": JSON_VALUES, "datatype": JSON_VALUES, "data": DATA},
)
PLAUSIBLE_BODIES = st.fixed_dictionaries(
    {"inputs": st.lists(PLAUSIBLE_TENSORS, max_size=3)},
    optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from("yz")}), max_size=2),
        "id": st.text(max_size=3),
        "parameters": st.dictionaries(st.text(max_size=3), ELEMENTS, max_size=2),
    },
)


@given(st.binary(max_size=200), st.none() | st.integers(-2, 220))
def test_arbitrary_bytes_raise_only_invalid_request(
    encoded: bytes, header_length: int | None
) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(InvalidRequest):
            decode(encoded, header_length=header_length)


@given(
    JSON_VALUES | PLAUSIBLE_BODIES | st.fixed_dictionaries({"inputs": st.lists(GARBLED_TENSORS)}),
    st.binary(max_size=24),
    st.booleans(),
)
def test_arbitrary_json_raises_only_invalid_request(value: Any, tail: bytes, split: bool) -> None:
    as_response = value
    if isinstance(value, dict) and "inputs" in value:
        as_response = {"model_name": "m", "outputs": value["inputs"]}
    for decode, obj in ((decode_request, value), (decode_response, as_response)):
        header = body(obj)
        try:
            decoded = decode(header + tail, header_length=len(header) if split else None)
        except InvalidRequest:
            continue
        tensors = decoded.inputs if isinstance(decoded, InferenceRequest) else decoded.outputs
        for tensor in tensors:
            assert tensor.data.dtype == DATATYPE_TO_NUMPY[tensor.datatype]


# --- metadata and errors ------------------------------------------------------------------


def test_metadata_and_error_bodies_follow_the_protocol() -> None:
    server = ServerMetadata("aimesh", "0.1.0", ["binary_tensor_data"])
    assert encode_server_metadata(server) == (
        b'{"name":"aimesh","version":"0.1.0","extensions":["binary_tensor_data"]}'
    )
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 30])
    model = ModelMetadata("fraud", "sklearn", ["1", "2"], [spec], [spec])
    assert msgspec.json.decode(encode_model_metadata(model)) == {
        "name": "fraud",
        "versions": ["1", "2"],
        "platform": "sklearn",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 30]}],
    }
    with_params = ModelMetadata("m", "onnx", [], [], [], parameters={"batch": 8})
    assert msgspec.json.decode(encode_model_metadata(with_params))["parameters"] == {"batch": 8}
    assert encode_error('no model "m"') == b'{"error":"no model \\"m\\""}'
    assert msgspec.json.decode(encode_error("\ud800")) == {"error": "?"}


def test_unencodable_parameters_are_refused() -> None:
    response = InferenceResponse("m", [], parameters={"x": object()})
    with pytest.raises(InvalidRequest, match="cannot encode"):
        encode_response(response)


# --- tritonclient, the reference client, without a server -------------------------------

TRITON_DATATYPES = DATATYPES  # tritonclient speaks every datatype of the protocol


@given(st.data())
def test_requests_built_by_tritonclient_are_read(data: st.DataObject) -> None:
    inputs, arrays_sent = [], []
    for i, datatype in enumerate(
        data.draw(st.lists(st.sampled_from(TRITON_DATATYPES), min_size=1, max_size=3))
    ):
        binary = data.draw(st.booleans())
        # tritonclient writes NaN as a bare NaN token and non-UTF-8 bytes not at all in JSON
        array = data.draw(arrays(datatype, finite=not binary))
        tensor = triton.InferInput(f"in{i}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
        arrays_sent.append(array)
    outputs = [
        triton.InferRequestedOutput("y", binary_data=True),
        triton.InferRequestedOutput("z", binary_data=False),
    ]
    encoded, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="7"
    )
    request = decode_request(encoded, header_length=json_size)
    assert request.id == "7"
    for tensor, array in zip(request.inputs, arrays_sent, strict=True):
        assert_same(tensor.data, array)
    assert binary_outputs_requested(request) == {"y"}


def test_tritonclient_without_outputs_asks_for_all_binary() -> None:
    tensor = triton.InferInput("x", [1], "INT32")
    tensor.set_data_from_numpy(np.array([1], dtype=np.int32), binary_data=False)
    encoded, json_size = triton.InferenceServerClient.generate_request_body([tensor])
    assert binary_outputs_requested(decode_request(encoded, header_length=json_size)) is True


def test_tritonclient_json_nan_is_refused_as_invalid_json() -> None:
    tensor = triton.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.array([np.nan], dtype=np.float32), binary_data=False)
    encoded, json_size = triton.InferenceServerClient.generate_request_body([tensor])
    with pytest.raises(InvalidRequest, match="malformed"):
        decode_request(encoded, header_length=json_size)


@given(tensor_lists(), st.booleans())
def test_tritonclient_reads_our_responses(outputs: list[Tensor], binary: bool) -> None:
    encoded, header_length = encode_response(InferenceResponse("m", outputs), binary=binary)
    result = triton.InferResult.from_response_body(encoded, False, header_length)
    for tensor in outputs:
        theirs = result.as_numpy(tensor.name)
        if tensor.datatype == "BYTES" and result.get_output(tensor.name).get("data") is not None:
            # tritonclient leaves JSON strings as str; the bytes are their UTF-8
            theirs = np.array([s.encode() for s in theirs.ravel()], dtype=object).reshape(
                theirs.shape
            )
        assert_same(theirs, tensor.data)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_reads_bytes_bool_and_fp16_outputs(binary: bool) -> None:
    outputs = [
        Tensor("s", "BYTES", np.array([[b"caf\xc3\xa9", b""]], dtype=object)),
        Tensor("b", "BOOL", np.array([True, False, True])),
        Tensor("h", "FP16", np.array([0.1, -65504, 2**-24], dtype=np.float16)),
    ]
    encoded, header_length = encode_response(InferenceResponse("m", outputs), binary=binary)
    assert (header_length is None) is not binary
    result = triton.InferResult.from_response_body(encoded, False, header_length)
    want_strings = ["café", ""] if not binary else [b"caf\xc3\xa9", b""]
    assert result.as_numpy("s").tolist() == [want_strings]
    assert_same(result.as_numpy("b"), outputs[1].data)
    assert_same(result.as_numpy("h"), outputs[2].data)

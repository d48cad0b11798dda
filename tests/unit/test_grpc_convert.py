"""The gRPC codec: round trips, malformed messages, tritonclient compatibility, stable codegen."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.grpc._utils import _get_inference_request

from aimesh.errors import InvalidRequest
from aimesh.protocol import (
    DATATYPE_TO_NUMPY,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorSpec,
)
from aimesh.protocol.grpc import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataResponse,
    ServerMetadataResponse,
    metadata_from_pb,
    metadata_to_pb,
    model_metadata_from_pb,
    model_metadata_to_pb,
    request_from_pb,
    request_to_pb,
    response_from_pb,
    response_to_pb,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "src" / "aimesh" / "protocol" / "grpc" / "_generated"
DATATYPES = sorted(DATATYPE_TO_NUMPY)

# protobuf strings must be valid UTF-8: no lone surrogates
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
parameter_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(codec="utf-8"), max_size=8),
)
parameters = st.dictionaries(names, parameter_values, max_size=3)


@st.composite
def arrays(draw: st.DrawFn, datatype: str) -> np.ndarray:
    """An array of ``datatype`` (object array of bytes for BYTES) with a small random shape."""
    shape = draw(shapes)
    if datatype == "BYTES":
        return draw(hnp.arrays(np.object_, shape, elements=st.binary(max_size=6)))
    return draw(hnp.arrays(DATATYPE_TO_NUMPY[datatype], shape))


@st.composite
def tensors(draw: st.DrawFn, name: str) -> Tensor:
    datatype = draw(st.sampled_from(DATATYPES))
    return Tensor(name, datatype, draw(arrays(datatype)), draw(parameters))  # type: ignore[arg-type]


@st.composite
def tensor_lists(draw: st.DrawFn) -> list[Tensor]:
    unique = draw(st.lists(names, max_size=4, unique=True))
    return [draw(tensors(name)) for name in unique]


def assert_same_tensors(got: list[Tensor], want: list[Tensor]) -> None:
    assert [(t.name, t.datatype, t.shape, t.parameters) for t in got] == [
        (t.name, t.datatype, t.shape, t.parameters) for t in want
    ]
    for g, w in zip(got, want, strict=True):
        assert_same_array(g.data, w.data)


def assert_same_array(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == np.object_:
        assert got.tolist() == want.tolist()
    else:
        np.testing.assert_array_equal(got, want)  # NaN equals NaN here


def has_fp16(tensors: list[Tensor]) -> bool:
    return any(t.datatype == "FP16" for t in tensors)


def reparse(message: Any, cls: Any) -> Any:
    """What the peer sees: ``message`` through the wire, parsed as ``cls``."""
    return cls.FromString(message.SerializeToString())


# -- round trips ---------------------------------------------------------------------------


@settings(deadline=None)
@given(
    inputs=tensor_lists(),
    outputs=st.none() | st.lists(names, max_size=3, unique=True),
    request_id=st.none() | names,
    request_parameters=parameters,
    raw=st.booleans(),
)
def test_request_survives_the_wire_for_every_datatype(
    inputs: list[Tensor],
    outputs: list[str] | None,
    request_id: str | None,
    request_parameters: dict[str, Any],
    raw: bool,
) -> None:
    request = InferenceRequest(
        inputs=inputs,
        id=request_id,
        parameters=request_parameters,
        outputs=None if outputs is None else [RequestedOutput(n, {"k": 1}) for n in outputs],
    )
    if not raw and has_fp16(inputs):
        with pytest.raises(InvalidRequest, match="FP16 has no typed contents"):
            request_to_pb(request, model_name="m", raw=raw)
        return
    pb = request_to_pb(request, model_name="m", model_version="3", raw=raw)
    wire = reparse(pb, ModelInferRequest)
    assert (wire.model_name, wire.model_version) == ("m", "3")
    assert len(wire.raw_input_contents) == (len(inputs) if raw else 0)
    back = request_from_pb(wire)
    assert_same_tensors(back.inputs, inputs)
    assert back.id == request_id and back.parameters == request_parameters
    # an empty list of requested outputs means "all of them" on the wire, as None does
    assert back.outputs == (request.outputs or None)


@settings(deadline=None)
@given(
    outputs=tensor_lists(),
    version=st.none() | names,
    response_id=st.none() | names,
    response_parameters=parameters,
    raw=st.booleans(),
)
def test_response_survives_the_wire_for_every_datatype(
    outputs: list[Tensor],
    version: str | None,
    response_id: str | None,
    response_parameters: dict[str, Any],
    raw: bool,
) -> None:
    response = InferenceResponse("model", outputs, version, response_id, response_parameters)
    if not raw and has_fp16(outputs):
        with pytest.raises(InvalidRequest, match="FP16 has no typed contents"):
            response_to_pb(response, raw=raw)
        return
    back = response_from_pb(reparse(response_to_pb(response, raw=raw), ModelInferResponse))
    assert_same_tensors(back.outputs, outputs)
    assert (back.model_name, back.model_version, back.id) == ("model", version, response_id)
    assert back.parameters == response_parameters


def test_str_elements_of_a_bytes_tensor_arrive_as_utf8_bytes() -> None:
    tensor = Tensor("s", "BYTES", np.array(["héllo", "x"]))
    for raw in (True, False):
        pb = request_to_pb(InferenceRequest([tensor]), model_name="m", raw=raw)
        (back,) = request_from_pb(reparse(pb, ModelInferRequest)).inputs
        assert back.data.tolist() == ["héllo".encode(), b"x"]


def test_metadata_survives_the_wire() -> None:
    server = ServerMetadata("aimesh", "0.1.0", ["binary_tensor_data"])
    assert metadata_from_pb(reparse(metadata_to_pb(server), ServerMetadataResponse)) == server
    model = ModelMetadata(
        name="fraud",
        platform="sklearn",
        versions=["1", "2"],
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="INT64", shape=[-1])],
        parameters={"owner": "risk", "batched": True, "max_batch": 8},
    )
    back = model_metadata_from_pb(reparse(model_metadata_to_pb(model), ModelMetadataResponse))
    assert (back.name, back.platform, back.versions) == ("fraud", "sklearn", ["1", "2"])
    assert (back.inputs, back.outputs) == (model.inputs, model.outputs)
    assert back.parameters == {"owner": "risk", "batched": "true", "max_batch": "8"}


# -- malformed messages --------------------------------------------------------------------

CONTENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}
RIGHT_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
wild_shapes = st.one_of(
    st.lists(st.integers(0, 3), max_size=3),  # mostly plausible, so decoding gets far
    st.lists(st.one_of(st.integers(0, 4), st.integers(-(2**63), 2**63 - 1)), max_size=4),
    st.lists(st.integers(0, 2**63 - 1), min_size=2, max_size=4),
    st.lists(st.integers(0, 1), min_size=30, max_size=40),
)


@st.composite
def wild_raw(draw: st.DrawFn, datatype: str, count: int) -> bytes:
    """Raw bytes that are often almost right for ``count`` elements of ``datatype``."""
    if datatype == "BYTES" and count < 64 and draw(st.booleans()):
        items = draw(st.lists(st.binary(max_size=4), min_size=count, max_size=count + 1))
        return b"".join(len(i).to_bytes(4, "little") + i for i in items)
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is not None and dtype != np.object_ and count < 64 and draw(st.booleans()):
        size = count * dtype.itemsize + draw(st.sampled_from([0, 0, 0, -1, 1]))
        return draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
    return draw(st.binary(max_size=40))


@st.composite
def wild_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor that is wrong in zero, one or several ways, and its raw bytes."""
    datatype = draw(st.sampled_from([*DATATYPES, "BF16", "", "fp32", "STRING"]))
    shape = draw(wild_shapes)
    count = math.prod(max(d, 0) for d in shape)
    fields = draw(st.lists(st.sampled_from(sorted(CONTENT_VALUES)), max_size=2, unique=True))
    if datatype in RIGHT_FIELD and draw(st.booleans()):
        fields = [RIGHT_FIELD[datatype]]
    size = st.integers(max(count - 1, 0), count + 1) if count < 64 else st.integers(0, 8)
    return {
        "name": draw(st.sampled_from(["a", "b", "c", "d", "e", "f"])),
        "datatype": datatype,
        "shape": shape,
        "contents": {
            f: draw(st.lists(CONTENT_VALUES[f], min_size=n, max_size=n))
            for f in fields
            for n in [draw(size)]
        },
        "set_contents": draw(st.booleans()),
        "raw": draw(wild_raw(datatype, count)),
    }


@st.composite
def wild_messages(draw: st.DrawFn, cls: Any) -> Any:
    message = cls()
    tensor_list = message.inputs if cls is ModelInferRequest else message.outputs
    raw_list = (
        message.raw_input_contents if cls is ModelInferRequest else message.raw_output_contents
    )
    specs = draw(st.lists(wild_tensors(), max_size=3))
    raw_mode = draw(st.sampled_from(["none", "one per tensor", "one per tensor", "any count"]))
    for spec in specs:
        pb = tensor_list.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        if spec["set_contents"]:
            pb.contents.SetInParent()
        if raw_mode == "none" or draw(st.integers(0, 4)) == 0:
            for field, values in spec["contents"].items():
                getattr(pb.contents, field).extend(values)
        if draw(st.integers(0, 9)) == 0:
            pb.parameters["p"].SetInParent()  # a parameter with no value
    if raw_mode == "one per tensor":
        raw_list.extend(spec["raw"] for spec in specs)
    elif raw_mode == "any count":
        raw_list.extend(draw(st.lists(st.binary(max_size=16), max_size=4)))
    return cls.FromString(message.SerializeToString())


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(message=wild_messages(ModelInferRequest))
def test_malformed_requests_raise_only_invalid_request(message: ModelInferRequest) -> None:
    try:
        request = request_from_pb(message)
    except InvalidRequest:
        return
    for tensor, pb in zip(request.inputs, message.inputs, strict=True):
        assert (tensor.name, tensor.datatype, tensor.shape) == (pb.name, pb.datatype, pb.shape)


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(message=wild_messages(ModelInferResponse))
def test_malformed_responses_raise_only_invalid_request(message: ModelInferResponse) -> None:
    with contextlib.suppress(InvalidRequest):
        response_from_pb(message)


def _input(
    name: str = "x", datatype: str = "INT32", shape: tuple[int, ...] = (2,), **contents: Any
) -> ModelInferRequest.InferInputTensor:
    tensor = ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(InferTensorContents(**contents))
    return tensor


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (ModelInferRequest(inputs=[_input(), _input()]), "input 'x' appears twice"),
        (ModelInferRequest(inputs=[_input(datatype="FLOAT")]), "unknown datatype 'FLOAT'"),
        (ModelInferRequest(inputs=[_input(int_contents=[1])]), "needs 2 elements, got 1"),
        (
            ModelInferRequest(inputs=[_input(int_contents=[1, 2])], raw_input_contents=[b"x" * 8]),
            "has typed contents, but the message also has raw contents",
        ),
        (
            ModelInferRequest(inputs=[_input(), _input("y")], raw_input_contents=[b"x" * 8]),
            "one entry per input: got 1 entries for 2 inputs",
        ),
        (
            ModelInferRequest(inputs=[_input()], raw_input_contents=[b"x" * 7]),
            "needs 8 bytes, got 7",
        ),
        (
            ModelInferRequest(inputs=[_input(datatype="FP16", fp32_contents=[1.0, 2.0])]),
            "FP16 has no typed contents field",
        ),
        (
            ModelInferRequest(inputs=[_input(fp32_contents=[1.0, 2.0])]),
            "INT32, so its elements belong in int_contents, not fp32_contents",
        ),
        (
            ModelInferRequest(inputs=[_input(datatype="INT8", int_contents=[1, 300])]),
            "outside the range of INT8",
        ),
        (ModelInferRequest(inputs=[_input(shape=(2, -1))]), "negative dimension"),
        (ModelInferRequest(inputs=[_input(shape=(0, 2**62, 2**62))]), "is too large"),
        (
            ModelInferRequest(
                inputs=[_input(int_contents=[1, 2])],
                outputs=[{"name": "y"}, {"name": "y"}],
            ),
            "requested output 'y' appears twice",
        ),
        (
            ModelInferRequest(
                inputs=[_input(int_contents=[1, 2])], parameters={"p": InferParameter()}
            ),
            "parameter 'p' has no value",
        ),
    ],
)
def test_malformed_request_is_refused_with_a_clear_message(
    message: ModelInferRequest, error: str
) -> None:
    with pytest.raises(InvalidRequest, match=error.replace("(", r"\(")):
        request_from_pb(reparse(message, ModelInferRequest))


@pytest.mark.parametrize(
    ("value", "error"),
    [(2**64, "does not fit in 64 bits"), (None, "must be a bool, int, float or str")],
)
def test_unrepresentable_parameter_is_refused(value: Any, error: str) -> None:
    request = InferenceRequest([], parameters={"p": value})
    with pytest.raises(InvalidRequest, match=error):
        request_to_pb(request, model_name="m")


def test_float_array_is_not_sent_as_integers() -> None:
    request = InferenceRequest([Tensor("x", "INT32", np.array([1.5]))])
    for raw in (True, False):
        with pytest.raises(InvalidRequest, match="cannot send an array of float64 as INT32"):
            request_to_pb(request, model_name="m", raw=raw)


# -- tritonclient.grpc compatibility (no server: its own messages, through the wire) ------


def triton_arrays() -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(DATATYPES).flatmap(arrays)


@settings(deadline=None, max_examples=60)
@given(arrays_in=st.lists(triton_arrays(), min_size=1, max_size=3))
def test_request_sent_by_tritonclient_decodes_to_the_same_arrays(
    arrays_in: list[np.ndarray],
) -> None:
    inputs = []
    for index, array in enumerate(arrays_in):
        datatype = "BYTES" if array.dtype == np.object_ else triton.np_to_triton_dtype(array.dtype)
        inputs.append(
            triton.InferInput(f"in{index}", list(array.shape), datatype).set_data_from_numpy(array)
        )
    triton_request = _get_inference_request(
        model_name="fraud",
        inputs=inputs,
        model_version="2",
        request_id="r-1",
        outputs=[triton.InferRequestedOutput("y", class_count=3)],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=7,
        timeout=1000,
        parameters={"f": 0.5, "s": "text", "b": True, "i": -4},
    )
    pb = reparse(triton_request, ModelInferRequest)
    assert (pb.model_name, pb.model_version) == ("fraud", "2")
    request = request_from_pb(pb)
    assert request.id == "r-1"
    assert request.parameters == {
        "priority": 7,  # a uint64_param
        "timeout": 1000,
        "f": 0.5,  # a double_param
        "s": "text",
        "b": True,
        "i": -4,
    }
    assert request.outputs == [RequestedOutput("y", {"classification": 3})]
    for index, (tensor, array) in enumerate(zip(request.inputs, arrays_in, strict=True)):
        assert tensor.name == f"in{index}"
        assert_same_array(tensor.data, array)


@settings(deadline=None, max_examples=60)
@given(outputs=tensor_lists())
def test_response_decodes_in_tritonclient_to_the_same_arrays(outputs: list[Tensor]) -> None:
    response = InferenceResponse("fraud", outputs, "2", "r-1", {"done": True})
    result = triton.InferResult(reparse(response_to_pb(response), triton_pb2.ModelInferResponse))
    for tensor in outputs:
        assert_same_array(result.as_numpy(tensor.name), tensor.data)
    seen = result.get_response()
    assert (seen.model_name, seen.model_version, seen.id) == ("fraud", "2", "r-1")
    assert seen.parameters["done"].bool_param is True


def test_generated_messages_coexist_with_tritonclients_in_one_process() -> None:
    # both define inference.ModelInferRequest; in protobuf's default pool that would clash
    assert (
        ModelInferRequest.DESCRIPTOR.full_name == triton_pb2.ModelInferRequest.DESCRIPTOR.full_name
    )
    assert ModelInferRequest.DESCRIPTOR.file.pool is not triton_pb2.DESCRIPTOR.pool


# -- generated code ------------------------------------------------------------------------


def test_gen_proto_reproduces_the_committed_generated_code(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    committed = sorted(p.name for p in GENERATED.iterdir() if p.is_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"{name} is stale: run scripts/gen_proto.sh (make proto) and commit the result"
        )

"""The raw tensor layout shared by REST binary data and gRPC raw contents."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aimesh.errors import InvalidRequest
from aimesh.protocol.raw import array_from_raw, array_to_raw, as_datatype
from aimesh.protocol.tensors import DATATYPE_TO_NUMPY, Datatype

DATATYPES: list[Datatype] = list(DATATYPE_TO_NUMPY)  # type: ignore[arg-type]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


@st.composite
def arrays(draw: st.DrawFn, datatype: Datatype) -> np.ndarray:
    """Any array of ``datatype``: NaN, infinities, -0.0 and empty shapes included."""
    shape = draw(SHAPES)
    if datatype != "BYTES":
        return draw(hnp.arrays(DATATYPE_TO_NUMPY[datatype], shape))
    count = math.prod(shape)
    out = np.empty(count, dtype=object)
    out[:] = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
    return out.reshape(shape)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal bit for bit (NaN payloads and -0.0 included), same dtype and shape."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        assert got.tobytes() == want.tobytes()


@given(st.data())
def test_every_datatype_round_trips_exactly(data: st.DataObject) -> None:
    datatype = data.draw(st.sampled_from(DATATYPES))
    array = data.draw(arrays(datatype))
    assert_same(array_from_raw(datatype, array.shape, array_to_raw(datatype, array)), array)


@pytest.mark.parametrize(
    ("datatype", "array", "raw"),
    [
        ("INT32", np.array([1, -2], dtype=np.int32), b"\x01\x00\x00\x00\xfe\xff\xff\xff"),
        ("UINT16", np.array([[1], [256]], dtype=np.uint16), b"\x01\x00\x00\x01"),
        ("FP32", np.array([1.0], dtype=np.float32), b"\x00\x00\x80\x3f"),
        ("FP16", np.array([1.0], dtype=np.float16), b"\x00\x3c"),
        ("BOOL", np.array([True, False, True]), b"\x01\x00\x01"),
        (
            "BYTES",
            np.array([b"ab", b"", b"xyz"], dtype=object),
            b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz",
        ),
    ],
)
def test_layout_is_little_endian_row_major_with_length_prefixed_bytes(
    datatype: Datatype, array: np.ndarray, raw: bytes
) -> None:
    assert array_to_raw(datatype, array) == raw
    assert_same(array_from_raw(datatype, array.shape, raw), array)


def test_strided_and_big_endian_arrays_are_written_row_major_little_endian() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3).T  # neither C-contiguous nor native
    assert array_to_raw("INT32", big) == np.ascontiguousarray(big, dtype="<i4").tobytes()


def test_numeric_decoding_is_a_read_only_view_of_the_buffer() -> None:
    buf = bytearray(np.arange(4, dtype="<f4").tobytes())
    array = array_from_raw("FP32", [2, 2], memoryview(buf))
    buf[0:4] = np.float32(9).tobytes()  # a copy would not see this
    assert array[0, 0] == 9
    assert not array_from_raw("FP32", [4], bytes(buf)).flags.writeable


def test_str_elements_are_sent_as_utf8_and_read_back_as_bytes() -> None:
    raw = array_to_raw("BYTES", np.array(["é", "a"]))
    assert array_from_raw("BYTES", [2], raw).tolist() == ["é".encode(), b"a"]


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "fragment"),
    [
        ("FP32", [2], b"\x00" * 7, "needs 8 bytes, got 7"),
        ("INT8", [-1], b"", "negative dimension"),
        ("INT8", [1 << 40, 1 << 40], b"", "too large"),
        ("INT8", [0, 1 << 40, 1 << 40], b"", "too large"),
        ("INT8", [1] * 33, b"\x00", "at most 32"),
        ("INT8", [True], b"\x00", "must hold integers"),
        ("INT8", ["1"], b"\x00", "must hold integers"),
        ("BOOL", [2], b"\x01\x02", "other than 0 or 1"),
        ("BYTES", [1], b"\x01\x00", "needs at least 4 bytes"),
        ("BYTES", [2], b"\x01\x00\x00\x00a\x00\x00\x00", "ends inside the length of element 1"),
        ("BYTES", [1], b"\x05\x00\x00\x00ab", "declares 5 bytes but only 2 remain"),
        ("BYTES", [1], b"\x01\x00\x00\x00abc", "2 bytes after its last element"),
        ("BYTES", [1 << 30], b"", "needs at least"),
        ("FP8", [1], b"\x00", "unknown datatype"),
    ],
)
def test_malformed_raw_data_is_refused(
    datatype: Datatype, shape: list[int], raw: bytes, fragment: str
) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        array_from_raw(datatype, shape, raw)


@given(
    st.sampled_from([*DATATYPES, "NOPE"]),
    st.lists(st.integers(-2, 1 << 62), max_size=5),
    st.binary(max_size=64),
)
def test_arbitrary_bytes_and_shapes_raise_only_invalid_request(
    datatype: Datatype, shape: list[int], raw: bytes
) -> None:
    try:
        array = array_from_raw(datatype, shape, raw)
    except InvalidRequest:
        return
    assert list(array.shape) == shape


@given(st.lists(st.binary(max_size=300), max_size=4))
def test_bytes_elements_of_any_length_round_trip(elements: list[bytes]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = array_to_raw("BYTES", array)
    assert len(raw) == sum(4 + len(e) for e in elements)
    assert struct.unpack_from("<I", raw)[0] == len(elements[0]) if elements else raw == b""
    assert array_from_raw("BYTES", [len(elements)], raw).tolist() == elements


@pytest.mark.parametrize(
    ("datatype", "array", "fragment"),
    [
        ("INT32", np.array([1.5]), "float64 as INT32"),
        ("BOOL", np.array([1]), "int64 as BOOL"),
        ("BYTES", np.array([1.0]), "float64 as BYTES"),
        ("FP32", np.array(["a"]), "<U1 as FP32"),
        ("BYTES", np.array([1, b"a"], dtype=object), "got int"),
        ("BYTES", np.array(["\ud800"], dtype=object), "not valid unicode"),
    ],
)
def test_arrays_of_an_incompatible_kind_are_refused(
    datatype: Datatype, array: np.ndarray, fragment: str
) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        array_to_raw(datatype, array)


def test_arrays_are_cast_within_their_kind_or_wider() -> None:
    assert as_datatype("FP32", np.array([1.5])).dtype == np.float32
    assert as_datatype("INT64", np.array([True])).dtype == np.int64
    assert as_datatype("FP16", np.array([1e300])).tolist() == [math.inf]  # numpy's rounding
    same = np.arange(3, dtype=np.int32)
    assert as_datatype("INT32", same) is same

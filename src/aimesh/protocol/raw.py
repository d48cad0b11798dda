"""The raw tensor byte layout of the Open Inference Protocol v2.

One layout serves both transports: the REST binary tensor data extension (bytes after the
JSON header) and gRPC's ``raw_input_contents`` / ``raw_output_contents``. Fixed-size
datatypes are little-endian and row-major; BOOL is one byte per element (0 or 1); each
BYTES element is a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import operator
import struct
import sys
from collections.abc import Sequence

import numpy as np

from aimesh.errors import InvalidRequest
from aimesh.protocol.tensors import DATATYPE_TO_NUMPY, Datatype

MAX_DIMS = 32
"""numpy's smallest supported ``ndim`` across versions 1.x and 2.x."""

MAX_EXTENT = 1 << 48
"""Largest product of a shape's non-zero dimensions: beyond any real tensor, and small
enough that numpy can shape an empty array with it (numpy counts the non-zero dims too)."""

_LITTLE_ENDIAN = sys.byteorder == "little"
_LENGTH = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    """The number of elements of ``shape``; InvalidRequest unless every dim is an int >= 0."""
    if len(shape) > MAX_DIMS:
        raise InvalidRequest(f"shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    count = 1
    extent = 1
    for dim in shape:
        # bool is an int in Python, but a shape of [True] is certainly a client bug
        if isinstance(dim, bool):
            raise InvalidRequest(f"shape {list(shape)} must hold integers")
        try:
            size = operator.index(dim)
        except TypeError:
            raise InvalidRequest(f"shape {list(shape)} must hold integers") from None
        if size < 0:
            raise InvalidRequest(f"shape {list(shape)} has a negative dimension")
        count *= size
        extent *= size or 1
        if extent > MAX_EXTENT:
            raise InvalidRequest(f"shape {list(shape)} is too large")
    return count


def array_from_raw(datatype: Datatype, shape: Sequence[int], buf: bytes | memoryview) -> np.ndarray:
    """Decode a raw tensor into an array of ``shape``; zero-copy (read-only) when possible.

    Raises InvalidRequest when the datatype is unknown, the shape is invalid, or the bytes
    do not hold exactly ``prod(shape)`` elements.
    """
    count = element_count(shape)
    dims = tuple(operator.index(dim) for dim in shape)
    if datatype == "BYTES":
        return _bytes_from_raw(dims, count, memoryview(buf))
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidRequest(f"unknown datatype {datatype!r}")
    nbytes = len(buf) if isinstance(buf, bytes) else memoryview(buf).nbytes
    if nbytes != count * dtype.itemsize:
        raise InvalidRequest(
            f"{datatype} tensor of shape {list(dims)} needs {count * dtype.itemsize} bytes, "
            f"got {nbytes}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(buf, dtype=np.uint8)
        # anything but 0/1 means the client mislabelled a byte tensor; reject it loudly
        if octets.size and int(octets.max()) > 1:
            raise InvalidRequest("BOOL tensor holds a byte other than 0 or 1")
        return octets.view(np.bool_).reshape(dims)
    array = np.frombuffer(buf, dtype=dtype.newbyteorder("<"))
    if not _LITTLE_ENDIAN:
        array = array.astype(dtype)
    return array.reshape(dims)


def _bytes_from_raw(dims: tuple[int, ...], count: int, view: memoryview) -> np.ndarray:
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    total = view.nbytes
    # every element costs at least its 4-byte length: bounds the loop before it starts
    if count * _LENGTH.size > total:
        raise InvalidRequest(
            f"BYTES tensor of shape {list(dims)} needs at least {count * _LENGTH.size} bytes, "
            f"got {total}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > total:
            raise InvalidRequest(f"BYTES tensor ends inside the length of element {index}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        end = offset + length
        if end > total:
            raise InvalidRequest(
                f"BYTES element {index} declares {length} bytes but only {total - offset} remain"
            )
        out[index] = bytes(view[offset:end])
        offset = end
    if offset != total:
        raise InvalidRequest(
            f"BYTES tensor of shape {list(dims)} has {total - offset} bytes after its last element"
        )
    return out.reshape(dims)


def as_datatype(datatype: Datatype, data: np.ndarray) -> np.ndarray:
    """``data`` as an array of ``datatype``'s numpy dtype, without a copy when it already is.

    Casts within a kind (FP64 to FP32, INT64 to INT8, with numpy's rounding and wrapping) and
    to a wider kind (BOOL to INT32, INT64 to FP64); refuses floats as ints, numbers as BOOL or
    BYTES, and strings as numbers, with InvalidRequest.
    """
    array = np.asarray(data)
    if datatype == "BYTES":
        if array.dtype.kind not in ("O", "S", "U"):
            raise InvalidRequest(f"cannot send an array of {array.dtype} as BYTES")
        return array
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidRequest(f"unknown datatype {datatype!r}")
    if array.dtype == dtype:
        return array
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise InvalidRequest(f"cannot send an array of {array.dtype} as {datatype}")
    # FP64 -> FP16 overflow becomes inf, as numpy does; no warning on the serving path
    with np.errstate(over="ignore"):
        return array.astype(dtype)


def array_to_raw(datatype: Datatype, data: np.ndarray) -> bytes:
    """Encode an array in the raw layout of ``datatype`` (row-major, little-endian).

    The array is first converted as :func:`as_datatype` does (InvalidRequest when it cannot
    be); BYTES elements must be ``bytes`` or ``str`` (sent as UTF-8).
    """
    array = as_datatype(datatype, data)
    if datatype == "BYTES":
        return _bytes_to_raw(array)
    if _LITTLE_ENDIAN or array.dtype.itemsize == 1:
        # tobytes() always writes C order, whatever the array's strides
        return array.tobytes()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _bytes_to_raw(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    pack = _LENGTH.pack
    for element in array.ravel().tolist():
        if isinstance(element, str):
            try:
                element = element.encode()
            except UnicodeEncodeError as exc:
                raise InvalidRequest(f"BYTES element is not valid unicode: {exc}") from None
        elif isinstance(element, bytearray | memoryview):
            element = bytes(element)
        elif not isinstance(element, bytes):
            raise InvalidRequest(
                f"BYTES element must be bytes or str, got {type(element).__name__}"
            )
        parts.append(pack(len(element)))
        parts.append(element)
    return b"".join(parts)

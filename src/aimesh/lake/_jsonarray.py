"""Read the elements of one JSON array from a byte stream, a bounded piece at a time.

``json.load`` would hold the whole document and every parsed row at once; this holds one
read's worth of text plus the element being parsed, so a multi-GB array of objects streams.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any, Protocol

from aimesh.errors import InvalidData

__all__ = ["iter_json_array"]

_WHITESPACE = " \t\r\n"
_DELIMITERS = _WHITESPACE + ",]"


class _Readable(Protocol):
    def read(self, nbytes: int, /) -> bytes: ...


def iter_json_array(
    stream: _Readable, *, read_size: int, max_element_bytes: int, name: str
) -> Iterator[Any]:
    """Each element of the JSON array that ``stream`` holds; :class:`InvalidData` if it is not one.

    An element longer than ``max_element_bytes`` is refused rather than buffered.
    """
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")()
    buf = ""
    pos = 0
    eof = False
    consumed = 0  # characters dropped from the front of buf, for error positions

    def more() -> bool:
        nonlocal buf, pos, eof, consumed
        if eof:
            return False
        data = stream.read(read_size)
        try:
            chunk = text.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise InvalidData(f"{name}: not UTF-8 text ({exc.reason})") from exc
        if not data:
            eof = True
        if pos > len(buf) // 2:
            consumed += pos
            buf, pos = buf[pos:], 0
        buf += chunk
        return bool(data)

    def skip_space() -> str | None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return None

    def fail(what: str) -> InvalidData:
        return InvalidData(f"{name}: {what} at character {consumed + pos}")

    if skip_space() != "[":
        raise fail("expected a JSON array ('[')")
    pos += 1
    first = True
    while True:
        char = skip_space()
        if char is None:
            raise fail("the array is not closed (']')")
        if char == "]":
            return
        if not first:
            if char != ",":
                raise fail("expected ',' or ']'")
            pos += 1
            if skip_space() is None:
                raise fail("the array is not closed (']')")
        first = False
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if len(buf) - pos > max_element_bytes or not more():
                    raise fail(f"invalid JSON ({exc.msg})") from exc
                continue
            # A value ends at a delimiter. Without one in sight, a number may go on in the
            # next read ("1" of "1.5"): read more and decode again (the buffer may move).
            if eof or (end < len(buf) and buf[end] in _DELIMITERS):
                break
            if len(buf) - pos > max_element_bytes:
                break
            more()
        pos = end
        yield value

"""Stored writes at the cost the job system can afford: several per job, thousands a second.

``js.publish`` (and the KV methods built on it) waits for each ack through a full request:
a ``wait_for`` with its own timer and waiter, a fresh random token, a JSON parse into a
dataclass. :class:`StoredWrites` publishes with a reply subject under one inbox
subscription of its own, matches acks to futures by a counter and decodes them with
msgspec: about a third of the client time per write. KV writes speak the KV protocol
directly: a put on ``$KV.<bucket>.<key>`` with ``Nats-Expected-Last-Subject-Sequence``.
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from aimesh.bus import Bus

__all__ = ["StoredWrites", "WrongRevision"]

# JetStream's error codes for "the subject's last sequence is not the one expected".
_WRONG_LAST_SEQUENCE = (10071, 10164)
_NO_RESPONDERS = "503"


class WrongRevision(Exception):
    """Raised when a KV write expected another revision of its key."""


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    seq: int = 0
    error: _Error | None = None


_ack = msgspec.json.Decoder(_Ack)


class StoredWrites:
    """Publishes to JetStream streams and waits for their acks, over one subscription."""

    def __init__(self, bus: Bus, *, timeout: float) -> None:
        self._bus = bus
        self._timeout = timeout
        self._prefix = ""
        self._tokens = itertools.count()
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to the inbox the acks come back on."""
        self._prefix = self._bus.nc.new_inbox() + "."
        self._sub = await self._bus.nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def close(self) -> None:
        """Stop listening; writes still waiting fail with ``TimeoutError``."""
        if self._sub is not None and not self._bus.nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TimeoutError("closed before the bus acknowledged"))
        self._pending.clear()

    async def _on_ack(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS.value) == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            ack = _ack.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(nats.errors.Error(f"unreadable ack from the bus: {exc}"))
            return
        if ack.error is None:
            future.set_result(ack.seq)
        elif ack.error.err_code in _WRONG_LAST_SEQUENCE:
            future.set_exception(WrongRevision(ack.error.description))
        else:
            future.set_exception(
                nats.js.errors.APIError(
                    code=ack.error.code,
                    err_code=ack.error.err_code,
                    description=ack.error.description,
                )
            )

    def _expire(self, token: str) -> None:
        future = self._pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(TimeoutError("no ack from the bus"))

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish to a stream and wait until it is stored; returns the stream sequence.

        Raises ``TimeoutError`` (no ack in time), ``NoStreamResponseError`` (no stream
        stores ``subject``), :class:`WrongRevision` or ``APIError`` (refused).
        """
        if self._sub is None:
            raise nats.errors.Error("stored writes are not started")
        token = str(next(self._tokens))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, token)
        try:
            await self._bus.nc.publish(
                subject, payload, reply=self._prefix + token, headers=headers
            )
            return await future
        finally:
            timer.cancel()
            self._pending.pop(token, None)

    async def kv_write(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        """Write ``key`` if its latest revision is ``last`` (0: if it has none); the new one.

        Raises :class:`WrongRevision` when it is not.
        """
        headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        return await self.publish(f"$KV.{bucket}.{key}", value, headers)

"""Stored writes and pulls at the cost the job system can afford: thousands of jobs a second.

``js.publish`` (and the KV methods built on it) waits for each ack through a full request:
a ``wait_for`` with its own timer and waiter, a fresh random token, a JSON parse into a
dataclass. :class:`StoredWrites` publishes with a reply subject under one inbox
subscription of its own, matches acks to futures by a counter, decodes them with msgspec
and keeps one timer for all the writes in flight: about a third of the client time per
write. KV writes speak the KV protocol directly: a put on ``$KV.<bucket>.<key>`` with
``Nats-Expected-Last-Subject-Sequence``. :class:`Pulls` does for a pull consumer what
``fetch`` does, without a task per message.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from aimesh.bus import Bus

__all__ = ["Pulls", "StoredWrites", "WrongRevision"]

log = logging.getLogger("aimesh.jobs.worker")

# JetStream's error codes for "the subject's last sequence is not the one expected".
_WRONG_LAST_SEQUENCE = (10071, 10164)
_NO_RESPONDERS = "503"
# How long after its expiry a pull request may still say it ended, before it counts as lost.
_LOST_S = 5.0
# The statuses that end a pull request in the ordinary way: no messages, request expired.
_REQUEST_ENDED = ("404", "408")


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
        # Writes in the order they were sent, with their deadlines: one timer for them all
        # (acks come back in about that order), not one per write.
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sub: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Subscribe to the inbox the acks come back on."""
        self._loop = asyncio.get_running_loop()
        self._prefix = self._bus.nc.new_inbox() + "."
        self._sub = await self._bus.nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def close(self) -> None:
        """Stop listening; writes still waiting fail with ``TimeoutError``."""
        if self._sub is not None and not self._bus.nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
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

    def _sweep(self) -> None:
        """Fail the writes whose deadline passed; look again when the next one is due."""
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines:
            deadline, token = deadlines[0]
            future = self._pending.get(token)
            if future is None or future.done():
                deadlines.popleft()
            elif deadline <= now:
                deadlines.popleft()
                del self._pending[token]
                future.set_exception(TimeoutError("no ack from the bus"))
            else:
                self._sweeper = self._loop.call_at(deadline, self._sweep)
                return

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish to a stream and wait until it is stored; returns the stream sequence.

        Raises ``TimeoutError`` (no ack in time), ``NoStreamResponseError`` (no stream
        stores ``subject``), :class:`WrongRevision` or ``APIError`` (refused).
        """
        loop = self._loop
        if self._sub is None or loop is None:
            raise nats.errors.Error("stored writes are not started")
        token = str(next(self._tokens))
        future: asyncio.Future[int] = loop.create_future()
        self._pending[token] = future
        self._deadlines.append((loop.time() + self._timeout, token))
        if self._sweeper is None:
            self._sweeper = loop.call_at(loop.time() + self._timeout, self._sweep)
        try:
            await self._bus.nc.publish(
                subject, payload, reply=self._prefix + token, headers=headers
            )
            return await future
        finally:
            self._pending.pop(token, None)
            # Acks come back in about the order of the writes: drop the finished ones the
            # sweeper would otherwise keep until it next looks.
            while self._deadlines and self._deadlines[0][1] not in self._pending:
                self._deadlines.popleft()

    async def kv_write(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        """Write ``key`` if its latest revision is ``last`` (0: if it has none); the new one.

        Raises :class:`WrongRevision` when it is not.
        """
        headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        return await self.publish(f"$KV.{bucket}.{key}", value, headers)


_PENDING_MESSAGES = "Nats-Pending-Messages"
_HEARTBEAT = "100"


class Pulls:
    """Pull requests on a durable consumer; each message is handed over as it comes.

    nats-py's ``fetch`` waits for every message in two tasks of its own (a timeout around a
    queue read) named by a fresh uuid: more than the rest of a no-op job costs. Here one
    request asks for ``count`` messages and the subscription's callback hands each to
    ``take``, which returns whether it took it (a message it refuses is handed back with a
    nak). :attr:`owed` counts what was asked for and has not come: a request that expires
    says how many of its messages will not (status 408, ``Nats-Pending-Messages``), and
    ``on_end`` is called, so that the caller may ask again (not when a request is refused:
    then the caller's own timeout paces its next request).
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        consumer: str,
        *,
        take: Callable[[Msg], bool],
        on_end: Callable[[], None],
        expires_s: float,
    ) -> None:
        self._bus = bus
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._take = take
        self._on_end = on_end
        self._expires_s = expires_s
        self._inbox = ""
        self._sub: Subscription | None = None
        self._owed = 0
        self._last_request = 0.0

    @property
    def owed(self) -> int:
        """Messages asked for that have neither come nor been given up by the server."""
        if self._owed and time.monotonic() > self._last_request + self._expires_s + _LOST_S:
            self._owed = 0  # every request expired long ago: their ends were lost (a reconnect)
        return self._owed

    async def start(self) -> None:
        """Subscribe to the inbox the messages come to."""
        self._inbox = self._bus.nc.new_inbox()
        self._sub = await self._bus.nc.subscribe(self._inbox, cb=self._on_delivery)

    async def close(self) -> None:
        """Stop receiving: the server drops the requests still waiting (nobody listens)."""
        if self._sub is not None and not self._bus.nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None

    async def request(self, count: int) -> None:
        """Ask for up to ``count`` more messages, within ``expires_s``."""
        body = b'{"batch":%d,"expires":%d}' % (count, int(self._expires_s * 1e9))
        await self._bus.nc.publish(self._subject, body, reply=self._inbox)
        self._owed = self.owed + count
        self._last_request = time.monotonic()

    async def _on_delivery(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(Header.STATUS.value) if headers and not msg.data else None
        if status is None:
            if self._owed:
                self._owed -= 1
            if not self._take(msg):
                await msg.nak()
            return
        if status == _HEARTBEAT or headers is None:
            return
        pending = headers.get(_PENDING_MESSAGES, "")
        self._owed = max(self._owed - int(pending), 0) if pending.isdigit() else 0
        if status in _REQUEST_ENDED:
            self._on_end()
        else:  # refused (no JetStream, no consumer...): the caller asks again after a while
            log.warning(
                "pulling from %s: %s %s", self._subject, status, headers.get("Description", "")
            )

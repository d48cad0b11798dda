"""A small HTTP/1.1 client for the gateway's upstreams: keep-alive pools over asyncio.

Our upstreams are our own services (uvicorn), so the client needs little: requests with a
known body, responses with Content-Length or chunked bodies, keep-alive. What it must get
right is failure: a refused connection and a stale pooled connection are
:class:`~aimesh.gateway.upstream.NotSent` (the caller may try elsewhere), a connection lost
after the request went out is :class:`~aimesh.errors.UpstreamError`, no answer in time is
:class:`~aimesh.errors.UpstreamTimeout`.

Why not httpx: about 200 µs of client overhead per call, more than the whole hop budget.
Responses are parsed by ``httptools`` (llhttp, uvicorn's parser) in an
:class:`asyncio.Protocol`, so a small answer costs one callback and no task switch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

import httptools

from aimesh.errors import UpstreamError, UpstreamTimeout
from aimesh.gateway.upstream import NotSent

__all__ = ["HttpClient", "HttpPool", "UpstreamResponse"]

Headers = list[tuple[bytes, bytes]]

# uvicorn closes a keep-alive connection after 5 idle seconds; we stop reusing one earlier,
# so that we rarely write into a connection the server is closing.
IDLE_TIMEOUT_S = 4.0
CONNECT_TIMEOUT_S = 3.0
# A streamed body pauses the upstream socket beyond this many unread bytes.
_HIGH_WATER = 1 << 20
# Requests this small go out in one write (one segment with TCP_NODELAY).
_JOIN_LIMIT = 1 << 16


_TIMED_OUT = object()


def _expire(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class UpstreamResponse:
    """An upstream's answer: status and headers at once, the body whole or as it arrives."""

    __slots__ = ("_chunks", "_conn", "_done", "_size", "_waiter", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: Headers = []
        self._conn: _Connection | None = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived."""
        return self._done

    def peek(self) -> bytes:
        """The body received so far, left in place."""
        return b"".join(self._chunks)

    def shutting_down(self) -> bool:
        """Whether this is a draining replica's refusal (503 ``shutting_down``): it did
        nothing with the request, which another instance may take."""
        return self.status == 503 and b'"shutting_down"' in self.peek()

    def header(self, name: bytes) -> bytes | None:
        """The first value of a (lower-case) header."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def take(self) -> bytes:
        """The body received so far, which is all of it when :attr:`complete`."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        if self._done:
            self._release()
        elif self._conn is not None:
            self._conn.resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def body(self, timeout: float) -> bytes:
        """Wait for the whole body and return it."""
        parts = [self.take()]
        async for chunk in self.chunks(timeout):
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self, timeout: float) -> AsyncIterator[bytes]:
        """The rest of the body as it arrives; ``timeout`` bounds each wait."""
        while True:
            if self._chunks:
                yield self.take()
            elif self._done:
                self._release()
                return
            else:
                conn = self._conn
                if conn is None or conn.closed:
                    self.abandon()  # gives the pool its slot back
                    raise UpstreamError("the upstream closed the connection mid-body")
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(timeout):
                        await self._waiter
                except TimeoutError as exc:
                    self.abandon()
                    raise UpstreamTimeout(f"the upstream stalled for {timeout:g}s") from exc

    def abandon(self) -> None:
        """Give up on the rest of the body; the connection cannot be reused."""
        if self._conn is not None:
            self._conn.close()
            self._release()

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self) -> None:
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response_done()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._head: asyncio.Future[object] | None = None
        self._response: UpstreamResponse | None = None
        self._received = False
        self._paused = False
        self.closed = False
        self.reused = False
        self.keep_alive = True
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        head, response = self._head, self._response
        if head is not None and not head.done():
            head.set_result(None)  # the waiter sees status 0 and decides what it means
        if response is not None and not response.complete:
            response._fail()

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is not None:
            self._response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._response is not None:
            self._response.status = self._parser.get_status_code()
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        if self._response is not None:
            self._response._finish()

    # -- the exchange ---------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes, timeout: float) -> UpstreamResponse:
        transport = self._transport
        if transport is None or self.closed or transport.is_closing():
            raise NotSent("stale connection")
        response = UpstreamResponse(self)
        self._response = response
        self._received = False
        loop = asyncio.get_running_loop()
        waiter = self._head = loop.create_future()
        if len(body) <= _JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        # A bare timer rather than asyncio.timeout(): this runs once per request.
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except BaseException:
            self.close()  # cancelled mid-exchange: the connection's state is unknown
            raise
        finally:
            timer.cancel()
        if waiter.result() is _TIMED_OUT:
            self.close()
            raise UpstreamTimeout(f"no answer within {timeout:g}s", timeout=timeout)
        if response.status == 0:
            self.close()
            if self.reused and not self._received:
                # The server closed this idle connection as we wrote: it never saw the request.
                raise NotSent("the pooled connection was closed by the upstream")
            raise UpstreamError("the upstream closed the connection without answering")
        return response

    def response_done(self) -> None:
        self._response = None
        self._head = None
        self._pool._give_back(self)

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        self.keep_alive = False
        if self._transport is not None:
            self._transport.close()
        self.closed = True


class HttpPool:
    """Keep-alive connections to one upstream ``host:port``, at most ``max_connections``."""

    def __init__(self, host: str, port: int, *, max_connections: int) -> None:
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}".encode()
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._max = max_connections
        self._closed = False

    async def request(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes,
        *, timeout: float,
    ) -> UpstreamResponse:  # fmt: skip
        """Send one request and return once the response's head arrived.

        Read the body with :meth:`UpstreamResponse.take` / ``chunks`` / ``body``; the
        connection goes back to the pool when the body has been read to its end.
        """
        head = b"".join(
            [method, b" ", target, b" HTTP/1.1\r\nhost: ", self.authority,
             b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
             *[b"%s: %s\r\n" % pair for pair in headers], b"\r\n"]
        )  # fmt: skip
        await self._slots.acquire()
        try:
            conn = await self._connection()
            try:
                return await conn.exchange(head, body, timeout)
            except NotSent:
                if not conn.reused:
                    raise
            # A stale pooled connection: once more, on a fresh one.
            conn = await self._connect()
            return await conn.exchange(head, body, timeout)
        except BaseException:
            self._slots.release()
            raise

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT_S:
                conn.reused = True
                return conn
            conn.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port
                )
        except (OSError, TimeoutError) as exc:
            raise NotSent(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def _give_back(self, conn: _Connection) -> None:
        self._slots.release()
        if conn.keep_alive and not conn.closed and not self._closed and len(self._idle) < self._max:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections; those in use close when their response is read."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class HttpClient:
    """One :class:`HttpPool` per upstream address, made on first use."""

    def __init__(self, *, max_connections_per_upstream: int) -> None:
        self._max = max_connections_per_upstream
        self._pools: dict[tuple[str, int], HttpPool] = {}

    def pool(self, host: str, port: int) -> HttpPool:
        """The pool for ``host:port``."""
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = HttpPool(host, port, max_connections=self._max)
        return pool

    def forget(self, host: str, port: int) -> None:
        """Close the pool of an upstream that went away."""
        pool = self._pools.pop((host, port), None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

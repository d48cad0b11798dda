"""The gateway's HTTP/1.1 client against scripted servers on local sockets.

Each server is a few lines of asyncio that answer (or misbehave) in one precise way: so
the tests show what the client does on keep-alive, chunked bodies, stale connections,
refusals, timeouts and connections lost mid-answer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from aimesh.errors import UpstreamError, UpstreamTimeout
from aimesh.gateway import HttpPool, NotSent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Server:
    """A scripted server that counts its connections."""

    def __init__(self, handler: Handler, *, max_connections: int = 2) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> HttpPool:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return HttpPool("127.0.0.1", port, max_connections=self.max_connections)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        request = await read_request(reader)
        writer.write(answer(request.split(b"\r\n\r\n", 1)[1]))
        await writer.drain()


def test_keep_alive_reuses_one_connection_and_sends_the_body_as_is() -> None:
    async def main() -> None:
        server = Server(echo_forever)
        async with server as pool:
            for body in (b'{"a": 1}', b"\x00\x01binary", b""):
                response = await pool.request(
                    b"POST", b"/x", [(b"content-type", b"application/json")], body, timeout=5
                )
                assert (response.status, response.complete, response.take()) == (200, True, body)
        assert server.connections == 1

    asyncio.run(main())


def test_a_chunked_body_arrives_whole_or_in_pieces() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection was reusable
        writer.write(answer(b"again"))
        await writer.drain()

    async def main() -> None:
        server = Server(chunked)
        async with server as pool:
            response = await pool.request(b"GET", b"/", [], b"", timeout=5)
            assert response.header(b"transfer-encoding") == b"chunked"
            assert not response.complete
            assert await response.body(timeout=5) == b"hello world"
            again = await pool.request(b"GET", b"/", [], b"", timeout=5)
            assert again.take() == b"again"
        assert server.connections == 1

    asyncio.run(main())


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(
            answer(b"ok")
        )  # keep-alive by the protocol, yet closed: a server's idle timeout
        await writer.drain()

    async def main() -> None:
        server = Server(one_answer_then_close)
        async with server as pool:
            assert (await pool.request(b"GET", b"/", [], b"", timeout=5)).take() == b"ok"
            await asyncio.sleep(0.05)
            assert (await pool.request(b"GET", b"/", [], b"", timeout=5)).take() == b"ok"
        assert server.connections == 2

    asyncio.run(main())


def test_a_refused_connection_is_not_sent() -> None:
    pool = HttpPool("127.0.0.1", free_port(), max_connections=2)
    with pytest.raises(NotSent, match="cannot connect"):
        asyncio.run(pool.request(b"GET", b"/", [], b"", timeout=5))


def test_no_answer_in_time_is_an_upstream_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(silent) as pool:
            with pytest.raises(UpstreamTimeout):
                await pool.request(b"GET", b"/", [], b"", timeout=0.2)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (b"", "without answering"),  # read the request, then hang up
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", "mid-body"),
        (b"NOT HTTP AT ALL\r\n\r\n", "without answering"),
    ],
)
def test_a_connection_lost_after_sending_is_an_error_not_a_retry(
    script: bytes, message: str
) -> None:
    async def misbehave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(script)
        await writer.drain()

    async def main() -> None:
        server = Server(misbehave, max_connections=1)
        async with server as pool:
            for _ in range(2):  # the second would wait forever if the first kept its slot
                with pytest.raises(UpstreamError, match=message):
                    async with asyncio.timeout(5):
                        response = await pool.request(b"POST", b"/", [], b"{}", timeout=5)
                        await response.body(timeout=5)
        assert server.connections == 2  # one each: the request may have run, never sent twice

    asyncio.run(main())


def test_the_pool_holds_at_most_its_connections() -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(answer(b"ok"))
            await writer.drain()

    async def main() -> None:
        server = Server(slow_echo)
        async with server as pool:

            async def one() -> bytes:
                response = await pool.request(b"GET", b"/", [], b"", timeout=5)
                return response.take()

            assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
        assert server.connections == 2

    asyncio.run(main())

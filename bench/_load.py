"""The load generator: one process, ``concurrency`` closed loops, as little CPU as it can.

REST: ``concurrency`` keep-alive connections, each an asyncio protocol (no streams, no HTTP
library) that writes one pre-encoded HTTP/1.1 request, reads the answer by Content-Length,
and sends the next. gRPC: ``concurrency`` tasks over a few grpc.aio channels, each sending
a pre-serialized ``ModelInferRequest`` and keeping the answer as bytes (never parsed).

Every request is timed with ``perf_counter_ns``. After ``warmup`` seconds the measurement
window opens; answers completed inside it are counted and their latencies kept. Then the
loops stop sending, answers in flight are awaited (bounded), and one JSON line with the
figures goes to stdout. Anything but a 200 / OK counts as an error, with a few examples.

Run: ``python bench/_load.py {rest,grpc} --port P --body FILE --concurrency C ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import msgspec
from _cpu import machine_cpu_s, process_cpu_s

GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
INFER_PATH = "/v2/models/fraud/infer"
MAX_EXAMPLES = 5
DRAIN_S = 10.0


class LoadResult(msgspec.Struct):
    """What one load run measured; latencies in milliseconds."""

    protocol: str
    concurrency: int
    duration_s: float
    completed: int
    errors: int
    error_examples: list[str]
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    client_cpu: float
    """CPU seconds this process spent per second of the window (1.0: one core)."""
    server_cpu: float
    """The same for the server process, read from /proc (-1 when unknown)."""
    machine_cpu: float
    """The same for the whole machine (-1 when unknown): what is left is other processes."""
    first_error_ns: int = 0
    """When the first error (of the warm-up too) came, by ``time.perf_counter_ns`` (0: none).
    On Linux that is CLOCK_MONOTONIC, which other processes read alike: a benchmark sets
    these against the moment it did something (``bench/resilience.py``: a replica killed)."""
    last_error_ns: int = 0
    """When the last error came, the same way (0: none)."""
    errors_by_kind: dict[str, int] = msgspec.field(default_factory=dict)
    """Errors by kind: ``HTTP 503 circuit_open`` (the status and the answer's code), a
    gRPC status, or what happened to the connection."""


@dataclass
class Window:
    """The measurement window, and everything observed in it."""

    opens_ns: int = 2**63 - 1  # set when the warm-up ends
    closes_ns: int = 2**63 - 1
    stopping: bool = False
    latencies: list[int] = field(default_factory=list)
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    first_error_ns: int = 0
    last_error_ns: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def record(self, sent_ns: int, ok: bool, detail: object) -> None:
        """Count one answer (or failure) that arrived now."""
        now = time.perf_counter_ns()
        if not ok:
            self.fail(detail)
        elif self.opens_ns <= now <= self.closes_ns:
            self.latencies.append(now - sent_ns)

    def fail(self, detail: object) -> None:
        """Count one error, keeping the first few, and when the first and the last came."""
        self.last_error_ns = time.perf_counter_ns()
        if not self.errors:
            self.first_error_ns = self.last_error_ns
        self.errors += 1
        text = str(detail)
        kind = _kind(text)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text[:300])


_CODE = re.compile(r'"code":\s*"(\w+)"')


def _kind(detail: str) -> str:
    """An error's kind: what comes before the first colon, and the answer's code if any."""
    head = detail.split(":", 1)[0][:60]
    code = _CODE.search(detail)
    return f"{head} {code.group(1)}" if code else head


# -- REST -------------------------------------------------------------------------------------


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection in a closed loop: send, read the whole answer, send again."""

    def __init__(self, request: bytes, window: Window, idle: asyncio.Future[None]) -> None:
        self.request = request
        self.window = window
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expected = -1  # total bytes of the current answer, once its head is read
        self.status = 0
        self.sent_ns = 0
        self.closed_by_us = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.expected < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self._stop(f"answer without content-length: {head[:200]!r}")
                return
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.expected = end + 4 + length
        if len(buffer) < self.expected:
            return
        ok = self.status == 200
        detail = "" if ok else f"HTTP {self.status}: {bytes(buffer[: self.expected])[-300:]!r}"
        if len(buffer) > self.expected:
            detail = "more bytes than one answer"
            ok = False
        self.window.record(self.sent_ns, ok, detail)
        buffer.clear()
        self.expected = -1
        if self.window.stopping:
            self._stop(None)
        else:
            self._send()

    def _stop(self, error: str | None) -> None:
        if error is not None:
            self.window.fail(error)
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed_by_us:
            self.window.fail(f"the server closed the connection: {exc!r}")
        if not self.idle.done():
            self.idle.set_result(None)


async def _rest(
    port: int, body: bytes, concurrency: int, window: Window
) -> list[asyncio.Future[None]]:
    request = (
        f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    idles: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        idle: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(
            functools.partial(_HttpConnection, request, window, idle), "127.0.0.1", port
        )
        idles.append(idle)
    return idles


# -- gRPC -------------------------------------------------------------------------------------


async def _grpc(
    port: int, body: bytes, concurrency: int, window: Window
) -> list[asyncio.Future[None]]:
    from grpc import aio

    # A few channels, each its own connection (a local subchannel pool), 16 calls apiece.
    n_channels = max(1, min(4, (concurrency + 15) // 16))
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(n_channels)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 10)
    # No serializers: the request goes as the bytes given, the answer stays bytes.
    calls = [channel.unary_unary(GRPC_METHOD) for channel in channels]

    async def loop(call: aio.UnaryUnaryMultiCallable) -> None:
        while not window.stopping:
            sent = time.perf_counter_ns()
            try:
                await call(body, timeout=30)
            except aio.AioRpcError as exc:
                window.record(sent, False, f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.01)  # an error answers fast: do not spin on it
            else:
                window.record(sent, True, "")

    async def run_all() -> None:
        try:
            await asyncio.gather(*(loop(calls[i % n_channels]) for i in range(concurrency)))
        finally:
            for channel in channels:
                await channel.close()

    return [asyncio.ensure_future(run_all())]


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> LoadResult:
    """Warm up, measure for ``duration`` seconds, stop, and summarize."""
    body = Path(args.body).read_bytes()
    window = Window()
    start = _rest if args.protocol == "rest" else _grpc
    idles = await start(args.port, body, args.concurrency, window)
    await asyncio.sleep(args.warmup)
    window.opens_ns = time.perf_counter_ns()
    cpu0, server0, machine0 = time.process_time(), process_cpu_s(args.server_pid), machine_cpu_s()
    await asyncio.sleep(args.duration)
    window.closes_ns = time.perf_counter_ns()
    cpu1, server1, machine1 = time.process_time(), process_cpu_s(args.server_pid), machine_cpu_s()
    window.stopping = True
    _, pending = await asyncio.wait(idles, timeout=DRAIN_S)
    for future in pending:
        window.fail("still waiting for an answer when the run ended")
        future.cancel()
    seconds = (window.closes_ns - window.opens_ns) / 1e9
    return summarize(
        args.protocol,
        args.concurrency,
        seconds,
        window,
        cpu1 - cpu0,
        _per_second(server0, server1, seconds),
        _per_second(machine0, machine1, seconds),
    )


def _per_second(before: float | None, after: float | None, seconds: float) -> float:
    return -1.0 if before is None or after is None else (after - before) / seconds


def summarize(
    protocol: str,
    concurrency: int,
    seconds: float,
    window: Window,
    client_cpu_s: float,
    server_cpu: float,
    machine_cpu: float,
) -> LoadResult:
    """Percentiles (nearest rank) and rates of one window."""
    latencies = sorted(window.latencies)
    n = len(latencies)

    def pct(q: float) -> float:
        if not n:
            return float("nan")
        return latencies[min(n - 1, max(0, round(q * n) - 1))] / 1e6

    return LoadResult(
        protocol=protocol,
        concurrency=concurrency,
        duration_s=seconds,
        completed=n,
        errors=window.errors,
        error_examples=window.examples,
        rps=n / seconds,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        max_ms=latencies[-1] / 1e6 if n else float("nan"),
        mean_ms=sum(latencies) / n / 1e6 if n else float("nan"),
        client_cpu=client_cpu_s / seconds,
        server_cpu=server_cpu,
        machine_cpu=machine_cpu,
        first_error_ns=window.first_error_ns,
        last_error_ns=window.last_error_ns,
        errors_by_kind=window.by_kind,
    )


def main() -> None:
    """Parse the arguments, run, print the result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=["rest", "grpc"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", required=True, help="file: JSON body (rest) or protobuf (grpc)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int, default=None)
    args = parser.parse_args()
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    result = runner(run(args))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()

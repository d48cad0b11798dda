"""A worker's small HTTP face: ``/health`` for supervisors, ``/metrics`` for Prometheus.

``aimesh worker KIND --port P`` serves it next to the consumer loop (``aimesh up`` always
does, so that it knows when a worker is ready). ``/health`` is readiness: 200 while the
worker pulls from its queue over a live bus connection, 503 before, while it drains and
while the bus is gone (it reconnects by itself); ``/health/live`` answers 200 for as long
as the process serves. Both are open. ``/metrics`` counts the
worker's jobs by outcome and the side effects its fences refused, and shows how many run
now; it needs the ``read`` scope whenever keys exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aimesh.auth import Keyring, key_from_headers
from aimesh.config import AuthSettings
from aimesh.errors import AimeshError
from aimesh.jobs.worker import Worker
from aimesh.rest import (
    JSON,
    ASGIScope,
    Guard,
    Readiness,
    Receive,
    RouteNotFound,
    Send,
    allow,
    bus_check,
    error_body,
    header,
    request_id_of,
    respond,
    retry_after,
    status_of,
)

__all__ = ["WorkerHealth", "serve_health"]

_OUTCOMES = ("succeeded", "failed", "retried", "cancelled", "released", "skipped")


class _WorkerCollector(Collector):
    """The worker's counters, read when scraped."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self.worker
        jobs = CounterMetricFamily(
            "aimesh_worker_jobs",
            "Attempts this worker ended, by outcome.",
            labels=["kind", "outcome"],
        )
        for outcome in _OUTCOMES:
            jobs.add_metric([w.kind, outcome], getattr(w.stats, outcome))
        yield jobs
        fenced = CounterMetricFamily(
            "aimesh_worker_fenced",
            "Side effects (registry pushes, alias moves, results) refused because their "
            "attempt was past its deadline or stopped.",
            labels=["kind"],
        )
        fenced.add_metric([w.kind], w.stats.fenced)
        yield fenced
        running = GaugeMetricFamily("aimesh_worker_running", "Jobs running now.", labels=["kind"])
        running.add_metric([w.kind], w.running)
        yield running
        slots = GaugeMetricFamily(
            "aimesh_worker_slots", "Jobs run at once, at most.", labels=["kind"]
        )
        slots.add_metric([w.kind], w.concurrency)
        yield slots


class WorkerHealth:
    """The ASGI app of a worker's HTTP face."""

    def __init__(self, worker: Worker, keyring: Keyring, guard: Guard | None = None) -> None:
        self.worker = worker
        self.keyring = keyring
        self.guard = guard or Guard()
        self.metrics = CollectorRegistry(auto_describe=True)
        self.metrics.register(_WorkerCollector(worker))
        self.readiness = Readiness()
        self.readiness.require("queue", self._pulling)
        self.readiness.require("bus", bus_check(lambda: worker.bus))

    def _pulling(self) -> str | None:
        if self.worker.stopping:
            return "draining"
        return None if self.worker.ready.is_set() else "not pulling yet"

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        try:
            self.guard.check_scope(scope)
            allow(scope["method"], "GET")
            if path == "/health":
                report = await self.readiness.report()
                body = msgspec.json.encode(
                    {"status": report.status, "checks": report.checks, "kind": self.worker.kind,
                     "worker": self.worker.id}
                )  # fmt: skip
                await respond(send, 200 if report.ready else 503, body, "")
            elif path == "/health/live":
                await respond(send, 200, b'{"status":"ok"}', "")
            elif path == "/metrics":
                client = scope.get("client")
                self.keyring.check(
                    key_from_headers(header(scope, b"x-api-key"), header(scope, b"authorization")),
                    "read",
                    client=client[0] if client else "unknown",
                )
                text = generate_latest(self.metrics)
                await respond(send, 200, text, "", CONTENT_TYPE_LATEST.encode())
            else:
                raise RouteNotFound(f"no route {path}; try /health, /health/live or /metrics")
        except AimeshError as exc:  # a route it has not, a method but GET, a key refused
            request_id = request_id_of(scope)
            body = error_body(exc.message, exc.code, request_id)
            wait = retry_after(exc)
            extra = [(b"retry-after", wait.encode())] if wait is not None else []
            await respond(send, status_of(exc), body, request_id, JSON, extra)


class _Quiet(uvicorn.Server):
    """uvicorn without its own signal handling: the worker's CLI decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_health(
    worker: Worker, host: str, port: int, keyring: Keyring, auth: AuthSettings | None = None
) -> tuple[asyncio.Task[None], int]:
    """Serve the worker's health and metrics; returns the server's task and its port.

    Cancel the task to stop it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    app = WorkerHealth(worker, keyring, Guard.from_settings(auth or AuthSettings()))
    server = _Quiet(
        uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False,
        )
    )  # fmt: skip
    bound: int = sock.getsockname()[1]

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        except asyncio.CancelledError:
            server.should_exit = True
            raise
        finally:
            sock.close()

    return asyncio.create_task(run(), name="worker-health"), bound

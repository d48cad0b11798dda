"""The small HTTP face of a process that serves no API: ``/health`` and ``/metrics``.

Job workers and the rollout controller run one next to their loop (``aimesh up`` always
asks for it: it is how the supervisor knows a process is ready). ``/health`` is readiness:
200 while every check of its :class:`~aimesh.rest.Readiness` passes, 503 with each check's
state otherwise; ``/health/live`` answers 200 for as long as the process serves. Both are
open. ``/metrics`` shows the process's Prometheus registry and needs the ``read`` scope
whenever keys exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Mapping

import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aimesh.auth import Keyring, key_from_headers
from aimesh.config import AuthSettings
from aimesh.errors import AimeshError, RouteNotFound
from aimesh.rest.asgi import JSON, ASGIScope, Receive, Send, allow, error_body, header, respond
from aimesh.rest.errors import request_id_of
from aimesh.rest.guard import Guard
from aimesh.rest.readiness import Readiness
from aimesh.rest.status import retry_after, status_of

__all__ = ["ProbeApp", "guard_of", "serve_probe"]


class ProbeApp:
    """The ASGI app of a process's health and metrics; ``facts`` join the health body."""

    def __init__(
        self,
        readiness: Readiness,
        metrics: CollectorRegistry,
        keyring: Keyring,
        *,
        guard: Guard | None = None,
        facts: Mapping[str, str] | None = None,
    ) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self.keyring = keyring
        self.guard = guard or Guard()
        self.facts = dict(facts or {})

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
                    {"status": report.status, "checks": report.checks, **self.facts}
                )
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
    """uvicorn without its own signal handling: the process's CLI decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_probe(
    app: ProbeApp, host: str, port: int, *, name: str
) -> tuple[asyncio.Task[None], int]:
    """Serve ``app`` on ``host:port`` (0: any free port); returns the server's task (cancel
    it to stop) and the port bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
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

    return asyncio.create_task(run(), name=f"{name}-health"), bound


def guard_of(auth: AuthSettings | None) -> Guard:
    """The guard of a probe from the auth settings (defaults when none)."""
    return Guard.from_settings(auth or AuthSettings())

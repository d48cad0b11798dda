"""The model service's REST adapter: Open Inference Protocol v2 as a bare ASGI app.

No web framework on this path: routing is a split of the path, bodies are decoded with
msgspec-based codecs, and each route converts, calls :class:`DataPlane`, converts back.
An inference's ``x-aimesh-deadline-ms`` header (the milliseconds its caller still waits)
is its deadline. This is the inference hot path; the benchmark under ``bench/`` keeps it
honest.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aimesh.auth import IDENTITY_HEADER, Keyring, Scope, key_from_headers
from aimesh.errors import AimeshError, InvalidRequest
from aimesh.protocol import rest_codec, whole_number
from aimesh.resilience import DEADLINE_HEADER
from aimesh.rest import (
    DOCS_ASSETS_URL,
    JSON,
    REQUEST_ID,
    ASGIScope,
    Guard,
    Message,
    Receive,
    RouteNotFound,
    Send,
    allow,
    check_infer_type,
    declared_length,
    docs_asset,
    error_body,
    error_headers,
    header,
    internal_error,
    log_failure,
    read_body,
    respond,
    shown_message,
    status_of,
    swagger_page,
)
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.metrics import ServingMetrics
from aimesh.serving.openapi import OPENAPI_DOCUMENT

log = logging.getLogger("aimesh.serving.rest")

HEADER_LENGTH = b"inference-header-content-length"
_DEADLINE = DEADLINE_HEADER.encode()
_IDENTITY = IDENTITY_HEADER.encode()


class RestApp:
    """An ASGI app answering OIP v2 for one :class:`DataPlane`, plus /metrics and /docs."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: ServingMetrics,
        *,
        max_request_bytes: int,
        keyring: Keyring,
        access_log: bool = False,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.guard = guard or Guard()
        """Browser origins and Host names (:mod:`aimesh.rest.guard`)."""
        self.plane = plane
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.keyring = keyring
        self.access_log = access_log
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown is not None:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        request_id = header(scope, REQUEST_ID) or uuid.uuid4().hex
        if self.access_log:
            send = _AccessLog(scope, send, request_id)
        try:
            self.guard.check_scope(scope)
            await self._route(scope, receive, send, request_id)
        except AimeshError as exc:
            status = status_of(exc)
            log_failure(log, exc, status, request_id)
            body = error_body(shown_message(exc, status), exc.code, request_id)
            await respond(send, status, body, request_id, JSON, error_headers(exc, status))
        except Exception:
            log.exception("request %s failed unexpectedly", request_id,
                          extra={"request_id": request_id})  # fmt: skip
            body = json.dumps(internal_error(request_id)).encode()
            await respond(send, 500, body, request_id)

    async def _route(self, scope: ASGIScope, receive: Receive, send: Send, request_id: str) -> None:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
            name, rest = parts[2], parts[3:]
            version: str | None = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            action = rest[0] if len(rest) == 1 else ("" if not rest else None)
            if action is not None:
                self._check(scope, "infer")
            if action == "infer":
                allow(method, "POST")
                await self._infer(scope, receive, send, request_id, name, version)
                return
            if action == "ready":
                allow(method, "GET")
                ready = self.plane.model_ready(name, version)
                await respond(send, 200 if ready else 503, _ready(ready), request_id)
                return
            if action == "":
                allow(method, "GET")
                meta = self.plane.model_metadata(name, version)
                await respond(send, 200, rest_codec.encode_model_metadata(meta), request_id)
                return
        elif parts == ["v2", "health", "live"]:
            allow(method, "GET")
            await respond(send, 200, _live(self.plane.live()), request_id)
            return
        elif parts == ["v2", "health", "ready"]:
            allow(method, "GET")
            ready = self.plane.ready()
            await respond(send, 200 if ready else 503, _ready(ready), request_id)
            return
        elif parts == ["v2"]:
            allow(method, "GET")  # open, like health: says nothing a caller could misuse
            server = rest_codec.encode_server_metadata(self.plane.server_metadata())
            await respond(send, 200, server, request_id)
            return
        elif parts == ["metrics"]:
            allow(method, "GET")
            self._check(scope, "read")
            content_type = b"text/plain; version=0.0.4; charset=utf-8"
            await respond(send, 200, self.metrics.render(), request_id, content_type)
            return
        elif parts == ["openapi.json"]:
            allow(method, "GET")
            await respond(send, 200, OPENAPI_DOCUMENT, request_id)
            return
        elif parts == ["docs"]:
            allow(method, "GET")
            page = swagger_page("aimesh model service")
            await respond(send, 200, page, request_id, b"text/html; charset=utf-8")
            return
        elif scope["path"].startswith(DOCS_ASSETS_URL):
            allow(method, "GET")
            # Only names of a fixed list: never a path on disk.
            asset = docs_asset(scope["path"][len(DOCS_ASSETS_URL) :])
            if asset is not None:
                await respond(send, 200, asset.body, request_id, asset.content_type, asset.headers)
                return
        raise RouteNotFound(f"no route {method} {scope['path']}")

    def _check(self, scope: ASGIScope, needed: Scope) -> None:
        """Raise unless the request's key may use a route needing ``needed``."""
        if not self.keyring.enabled:  # no key anywhere: the hot path reads no header for it
            return
        client = scope.get("client")
        self.keyring.check(
            key_from_headers(header(scope, b"x-api-key"), header(scope, b"authorization")),
            needed,
            client=client[0] if client else "unknown",
            on_behalf=header(scope, _IDENTITY),
        )

    async def _infer(
        self,
        scope: ASGIScope,
        receive: Receive,
        send: Send,
        request_id: str,
        name: str,
        version: str | None,
    ) -> None:
        started = time.perf_counter()
        status = "error"
        served_version = version or "?"
        try:
            check_infer_type(_content_type(scope))
            # Read before the body: the time left counts from when the request came.
            deadline = self.plane.deadline(header(scope, _DEADLINE))
            body = await read_body(receive, declared_length(scope), self.max_request_bytes)
            header_length = header(scope, HEADER_LENGTH)
            request = rest_codec.decode_request(
                body, header_length=_parse_length(header_length) if header_length else None
            )
            response = await self.plane.infer(name, version, request, deadline)
            served_version = response.model_version or served_version
            payload, json_length = rest_codec.encode_response(
                response, binary=rest_codec.binary_outputs_requested(request)
            )
            extra: list[tuple[bytes, bytes]] = []
            content_type = JSON
            if json_length is not None:
                content_type = b"application/octet-stream"
                extra.append((HEADER_LENGTH, str(json_length).encode()))
            await respond(send, 200, payload, request_id, content_type, extra)
            status = "ok"
        except AimeshError as exc:
            status = exc.code
            raise
        finally:
            self.metrics.observe(
                name, served_version, "rest", status, time.perf_counter() - started
            )


def _content_type(scope: ASGIScope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            found: bytes = value
            return found
    return None


def _parse_length(value: str) -> int:
    length = whole_number(value)
    if length is None:
        raise InvalidRequest(f"Inference-Header-Content-Length must be a number, got {value!r}")
    return length


_READY = {True: b'{"ready":true}', False: b'{"ready":false}'}


def _ready(ready: bool) -> bytes:
    return _READY[ready]


def _live(live: bool) -> bytes:
    return b'{"live":true}' if live else b'{"live":false}'


class _AccessLog:
    """Wraps ``send`` to log one structured line per request when the response starts."""

    def __init__(self, scope: ASGIScope, send: Send, request_id: str) -> None:
        self._scope = scope
        self._send = send
        self._request_id = request_id
        self._started = time.perf_counter()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            log.info(
                "%s %s %d",
                self._scope["method"],
                self._scope["path"],
                message["status"],
                extra={
                    "request_id": self._request_id,
                    "status": message["status"],
                    "ms": round((time.perf_counter() - self._started) * 1000, 3),
                },
            )
        await self._send(message)

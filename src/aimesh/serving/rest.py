"""The model service's REST adapter: Open Inference Protocol v2 as a bare ASGI app.

No web framework on this path: routing is a split of the path, bodies are decoded with
msgspec-based codecs, and each route converts, calls :class:`DataPlane`, converts back.
This is the inference hot path; the benchmark under ``bench/`` keeps it honest.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aimesh.errors import AimeshError, InvalidRequest, RequestTooLarge
from aimesh.protocol import rest_codec
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.metrics import ServingMetrics
from aimesh.serving.openapi import OPENAPI_DOCUMENT, SWAGGER_PAGE

log = logging.getLogger("aimesh.serving.rest")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _RouteNotFound(AimeshError):
    code = "route_not_found"


class _MethodNotAllowed(AimeshError):
    code = "method_not_allowed"


HTTP_STATUS: dict[str, int] = {
    "route_not_found": 404,
    "method_not_allowed": 405,
    "invalid_request": 400,
    "input_mismatch": 400,
    "datatype_mismatch": 400,
    "shape_mismatch": 400,
    "request_too_large": 413,
    "model_not_found": 404,
    "version_not_found": 404,
    "not_found": 404,
    "overloaded": 429,
    "unavailable": 503,
    "queue_full": 503,
    "shutting_down": 503,
    "deadline_exceeded": 504,
}
"""From an error's code to the HTTP status this service answers with."""

JSON = b"application/json"
HEADER_LENGTH = b"inference-header-content-length"
REQUEST_ID = b"x-request-id"


def _status_of(exc: AimeshError) -> int:
    return HTTP_STATUS.get(exc.code, 400 if isinstance(exc, InvalidRequest) else 500)


class RestApp:
    """An ASGI app answering OIP v2 for one :class:`DataPlane`, plus /metrics and /docs."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: ServingMetrics,
        *,
        max_request_bytes: int,
        access_log: bool = False,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.access_log = access_log
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _header(scope, REQUEST_ID) or uuid.uuid4().hex
        if self.access_log:
            send = _AccessLog(scope, send, request_id)
        try:
            await self._route(scope, receive, send, request_id)
        except AimeshError as exc:
            status = _status_of(exc)
            if status >= 500:
                log.warning(exc.message, extra={"code": exc.code, "request_id": request_id})
            await _respond(send, status, _error_body(exc.message, exc.code), request_id)
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id})
            body = _error_body("internal error; see the service log", "internal_error")
            await _respond(send, 500, body, request_id)

    async def _route(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
            name, rest = parts[2], parts[3:]
            version: str | None = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            action = rest[0] if len(rest) == 1 else ("" if not rest else None)
            if action == "infer":
                _allow(method, "POST")
                await self._infer(scope, receive, send, request_id, name, version)
                return
            if action == "ready":
                _allow(method, "GET")
                ready = self.plane.model_ready(name, version)
                await _respond(send, 200 if ready else 503, _ready(ready), request_id)
                return
            if action == "":
                _allow(method, "GET")
                meta = self.plane.model_metadata(name, version)
                await _respond(send, 200, rest_codec.encode_model_metadata(meta), request_id)
                return
        elif parts == ["v2", "health", "live"]:
            _allow(method, "GET")
            await _respond(send, 200, _live(self.plane.live()), request_id)
            return
        elif parts == ["v2", "health", "ready"]:
            _allow(method, "GET")
            ready = self.plane.ready()
            await _respond(send, 200 if ready else 503, _ready(ready), request_id)
            return
        elif parts == ["v2"]:
            _allow(method, "GET")
            server = rest_codec.encode_server_metadata(self.plane.server_metadata())
            await _respond(send, 200, server, request_id)
            return
        elif parts == ["metrics"]:
            _allow(method, "GET")
            content_type = b"text/plain; version=0.0.4; charset=utf-8"
            await _respond(send, 200, self.metrics.render(), request_id, content_type)
            return
        elif parts == ["openapi.json"]:
            await _respond(send, 200, OPENAPI_DOCUMENT, request_id)
            return
        elif parts == ["docs"]:
            await _respond(send, 200, SWAGGER_PAGE, request_id, b"text/html; charset=utf-8")
            return
        raise _RouteNotFound(f"no route {method} {scope['path']}")

    async def _infer(
        self,
        scope: Scope,
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
            body = await self._read_body(scope, receive)
            header_length = _header(scope, HEADER_LENGTH)
            request = rest_codec.decode_request(
                body, header_length=_parse_length(header_length) if header_length else None
            )
            response = await self.plane.infer(name, version, request)
            served_version = response.model_version or served_version
            payload, json_length = rest_codec.encode_response(
                response, binary=rest_codec.binary_outputs_requested(request)
            )
            extra: list[tuple[bytes, bytes]] = []
            content_type = JSON
            if json_length is not None:
                content_type = b"application/octet-stream"
                extra.append((HEADER_LENGTH, str(json_length).encode()))
            await _respond(send, 200, payload, request_id, content_type, extra)
            status = "ok"
        except AimeshError as exc:
            status = exc.code
            raise
        finally:
            self.metrics.observe(
                name, served_version, "rest", status, time.perf_counter() - started
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_request_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client went away before sending the whole body")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(size, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise _MethodNotAllowed(f"use {allowed}, not {method}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _parse_length(value: str) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"Inference-Header-Content-Length must be a number, got {value!r}")
    return int(value)


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": message, "code": code}).encode()


_READY = {True: b'{"ready":true}', False: b'{"ready":false}'}


def _ready(ready: bool) -> bytes:
    return _READY[ready]


def _live(live: bool) -> bytes:
    return b'{"live":true}' if live else b'{"live":false}'


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID, request_id.encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _AccessLog:
    """Wraps ``send`` to log one structured line per request when the response starts."""

    def __init__(self, scope: Scope, send: Send, request_id: str) -> None:
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

"""ASGI plumbing of the gateway's REST adapter: types, statuses, bodies, responses, paths."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aimesh.errors import AimeshError, InvalidRequest, NotFound, RequestTooLarge

ASGIScope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RouteNotFound(NotFound):
    """Raised for a path the gateway has no route for."""

    code = "route_not_found"


class MethodNotAllowed(AimeshError):
    """Raised for a method the route does not take."""

    code = "method_not_allowed"


HTTP_STATUS: dict[str, int] = {
    "route_not_found": 404,
    "method_not_allowed": 405,
    "request_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "overloaded": 429,
    "no_instance": 503,
    "unavailable": 503,
    "store_unavailable": 503,
    "bus_unavailable": 503,
    "upstream_error": 502,
    "upstream_timeout": 504,
}
"""From an error's code to the status the gateway answers with (else by family)."""

JSON = b"application/json"
REQUEST_ID = b"x-request-id"


def status_of(exc: AimeshError) -> int:
    """The HTTP status of an error: by code, else by family."""
    status = HTTP_STATUS.get(exc.code)
    if status is not None:
        return status
    if isinstance(exc, InvalidRequest):
        return 400
    if isinstance(exc, NotFound):
        return 404
    return 500


def allow(method: str, allowed: str) -> None:
    """Refuse any method but ``allowed`` (HEAD goes where GET does)."""
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowed(f"use {allowed}, not {method}")


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """The whole request body; :class:`RequestTooLarge` beyond ``limit`` (declared or read)."""
    if declared is not None and declared > limit:
        raise RequestTooLarge(declared, limit)
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


def raw_target(scope: ASGIScope) -> bytes:
    """The request target as the client sent it (path still percent-encoded, and query)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw + query(scope)


def query(scope: ASGIScope) -> bytes:
    """``?query`` of the request, or nothing."""
    text: bytes = scope.get("query_string", b"")
    return b"?" + text if text else b""


def model_path(name: str, version: str | None, suffix: bytes) -> bytes:
    """``/v2/models/{name}[/versions/{version}]{suffix}``."""
    # Only names and versions that matched a served instance get here: safe path segments.
    path = b"/v2/models/" + name.encode()
    if version is not None:
        path += b"/versions/" + version.encode()
    return path + suffix


def error_body(exc: AimeshError) -> bytes:
    """``{"error": message, "code": code}``."""
    return json.dumps({"error": exc.message, "code": exc.code}).encode()


async def respond(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a whole response with its length and the request id."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID, request_id.encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

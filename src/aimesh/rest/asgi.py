"""Bare-ASGI plumbing shared by the hot-path services (the model service and the gateway).

No framework: types for scope and messages, whole-body reads with a size limit, whole
responses with the request id, method checks, and the JSON error body. FastAPI services
(registry, lake, jobs) use :func:`aimesh.rest.install_error_handlers` instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aimesh.errors import InvalidRequest, MethodNotAllowed, RequestTooLarge, RouteNotFound
from aimesh.protocol import whole_number

__all__ = [
    "CLIENT_GONE",
    "JSON",
    "REQUEST_ID",
    "ASGIScope",
    "Message",
    "MethodNotAllowed",
    "Receive",
    "RouteNotFound",
    "Send",
    "allow",
    "declared_length",
    "error_body",
    "header",
    "internal_error",
    "read_body",
    "respond",
]

ASGIScope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
REQUEST_ID = b"x-request-id"
CLIENT_GONE = "the client went away before sending the whole body"
"""What a request whose client disconnected mid-body is refused with (400, to nobody)."""


def allow(method: str, allowed: str) -> None:
    """Refuse any method but ``allowed`` (HEAD goes where GET does)."""
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowed(method, ("GET", "HEAD") if allowed == "GET" else (allowed,))


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """A request header's value (``name`` in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """The whole request body; :class:`RequestTooLarge` beyond ``limit`` (declared or read)."""
    if declared is not None and declared > limit:
        raise RequestTooLarge(declared, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest(CLIENT_GONE)
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def declared_length(scope: ASGIScope) -> int | None:
    """The Content-Length the client declared, if it is a number."""
    value = header(scope, b"content-length")
    return None if value is None else whole_number(value)


def error_body(message: str, code: str, request_id: str) -> bytes:
    """``{"error": message, "code": code, "request_id": id}``: the OIP error body, and ours."""
    return json.dumps({"error": message, "code": code, "request_id": request_id}).encode()


def internal_error(request_id: str) -> dict[str, str]:
    """The body of an unexpected failure: nothing but the request id to look for in the log."""
    return {
        "error": f"internal error; the service log has it under request id {request_id}",
        "code": "internal_error",
        "request_id": request_id,
    }


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

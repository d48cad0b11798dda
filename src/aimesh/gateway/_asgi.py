"""ASGI plumbing of the gateway's REST adapter: types, statuses, bodies, responses, paths."""

from __future__ import annotations

from aimesh.errors import AimeshError
from aimesh.rest import (
    BASE_STATUS,
    JSON,
    REQUEST_ID,
    ASGIScope,
    MethodNotAllowed,
    Receive,
    RouteNotFound,
    Send,
    allow,
    error_body,
    read_body,
    respond,
)
from aimesh.rest import status_of as shared_status_of

__all__ = [
    "HTTP_STATUS",
    "JSON",
    "REQUEST_ID",
    "ASGIScope",
    "MethodNotAllowed",
    "Receive",
    "RouteNotFound",
    "Send",
    "allow",
    "gateway_error_body",
    "model_path",
    "query",
    "raw_target",
    "read_body",
    "respond",
    "status_of",
]

HTTP_STATUS: dict[str, int] = {
    **BASE_STATUS,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "overloaded": 429,
    "no_instance": 503,
    "queue_full": 503,
    "unavailable": 503,
    "store_unavailable": 503,
    "bus_unavailable": 503,
    "upstream_error": 502,
    "upstream_timeout": 504,
}
"""From an error's code to the status the gateway answers with (else by family)."""


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


def status_of(exc: AimeshError) -> int:
    """The HTTP status the gateway answers an error with."""
    return shared_status_of(exc, HTTP_STATUS)


def gateway_error_body(exc: AimeshError) -> bytes:
    """The JSON error body of an error."""
    return error_body(exc.message, exc.code)

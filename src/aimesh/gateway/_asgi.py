"""ASGI plumbing of the gateway's REST adapter: types, statuses, bodies, paths."""

from __future__ import annotations

import json

from aimesh.errors import AimeshError
from aimesh.rest import (
    JSON,
    REQUEST_ID,
    ASGIScope,
    MethodNotAllowed,
    Receive,
    RouteNotFound,
    Send,
    allow,
    error_body,
    internal_error,
    log_failure,
    read_body,
    respond,
    shown_message,
    status_of,
)

__all__ = [
    "JSON",
    "REQUEST_ID",
    "ASGIScope",
    "MethodNotAllowed",
    "Receive",
    "RouteNotFound",
    "Send",
    "allow",
    "gateway_error_body",
    "gateway_internal_error",
    "log_failure",
    "model_path",
    "query",
    "raw_target",
    "read_body",
    "respond",
    "status_of",
]


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


def gateway_error_body(exc: AimeshError, request_id: str) -> bytes:
    """The JSON error body of an error."""
    return error_body(shown_message(exc, status_of(exc)), exc.code, request_id)


def gateway_internal_error(request_id: str) -> bytes:
    """The JSON body of an unexpected failure: the request id to find it in the log."""
    return json.dumps(internal_error(request_id)).encode()

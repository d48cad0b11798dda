"""The one table from an error to the HTTP status every aimesh service answers it with.

Keyed by error class: an error takes the status of the nearest class of its ancestry
(its MRO) listed here, so a new subclass inherits its family's status unless it is listed.
The gRPC adapters have the twin of this table in :mod:`aimesh.protocol.grpc.status`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from aimesh.errors import (
    AimeshError,
    ArtifactDigestMismatch,
    ArtifactError,
    ArtifactTampered,
    ArtifactTooLarge,
    CircuitOpen,
    Conflict,
    DatasetVersionGone,
    DeadlineExceeded,
    Forbidden,
    InvalidData,
    InvalidRequest,
    JobFailed,
    MethodNotAllowed,
    NotFound,
    OriginRefused,
    Overloaded,
    QueryTooLarge,
    RateLimited,
    RequestTooLarge,
    ResultExpired,
    RuntimeUnavailable,
    SchemaMismatch,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
    hide_server_names,
)

__all__ = ["HTTP_STATUS", "error_headers", "retry_after", "shown_message", "status_of"]

HTTP_STATUS: Mapping[type[AimeshError], int] = {
    AimeshError: 500,
    InvalidRequest: 400,
    RequestTooLarge: 413,
    UnsupportedMediaType: 415,
    SchemaMismatch: 422,
    InvalidData: 422,
    QueryTooLarge: 422,
    NotFound: 404,
    ResultExpired: 410,
    DatasetVersionGone: 410,
    MethodNotAllowed: 405,
    Conflict: 409,
    JobFailed: 409,
    ArtifactError: 422,
    ArtifactDigestMismatch: 400,
    ArtifactTooLarge: 413,
    ArtifactTampered: 500,
    RuntimeUnavailable: 422,
    Unauthorized: 401,
    Forbidden: 403,
    OriginRefused: 403,
    Overloaded: 503,
    RateLimited: 429,
    Unavailable: 503,
    CircuitOpen: 503,
    UpstreamError: 502,
    UpstreamTimeout: 504,
    DeadlineExceeded: 504,
}
"""From an error class to its HTTP status; a class not listed takes its nearest ancestor's."""


def status_of(exc: AimeshError) -> int:
    """The HTTP status of ``exc``: its class's, else that of the nearest listed ancestor."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500  # not reached: AimeshError is listed


def retry_after(exc: AimeshError) -> str | None:
    """The ``Retry-After`` value of ``exc`` (whole seconds, at least 1), or None."""
    if exc.retry_after_s is None:
        return None
    return str(max(1, math.ceil(exc.retry_after_s)))


def shown_message(exc: AimeshError, status: int) -> str:
    """The message an error body shows: a server error's without URLs or paths in it.

    A server error (5xx) tells of the server's own parts (the bus, a database, an upstream);
    where they live is for the log, which keeps the whole message under the request id.
    """
    return hide_server_names(exc.message) if status >= 500 else exc.message


_WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="aimesh"')


def error_headers(exc: AimeshError, status: int) -> list[tuple[bytes, bytes]]:
    """The headers an answer of ``exc`` (with ``status``) carries beyond its body's.

    ``WWW-Authenticate`` on a 401, ``Retry-After`` when retrying may succeed, ``Allow``
    (every method of the path) on a 405: the same on every service.
    """
    headers: list[tuple[bytes, bytes]] = []
    if status == 401:
        headers.append(_WWW_AUTHENTICATE)
    wait = retry_after(exc)
    if wait is not None:
        headers.append((b"retry-after", wait.encode()))
    allowed: Sequence[str] | None = getattr(exc, "allowed", None)
    if status == 405 and allowed:
        headers.append((b"allow", ", ".join(allowed).encode()))
    return headers

"""The one table from an error to the gRPC status every aimesh gRPC adapter aborts with.

Keyed by error class like its HTTP twin (:mod:`aimesh.rest.status`): an error takes the
status of the nearest class of its ancestry (its MRO) listed here. The details of an error
carry its message, its code and the request id (``x-request-id`` metadata, passed on or
made), under which the service log keeps what the details leave out.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping

from grpc import StatusCode

from aimesh.errors import (
    AimeshError,
    AliasMoved,
    ArtifactError,
    ArtifactTampered,
    ArtifactTooLarge,
    CircuitOpen,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    InvalidRequest,
    JobFailed,
    MethodNotAllowed,
    ModelExists,
    NotFound,
    OriginRefused,
    Overloaded,
    QueryTooLarge,
    RecordConflict,
    RecordExists,
    RequestTooLarge,
    RuntimeUnavailable,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    hide_server_names,
)

__all__ = ["GRPC_STATUS", "grpc_details", "grpc_status_of", "internal_details", "request_id_in"]

_SERVER_FAULTS = frozenset(
    {StatusCode.INTERNAL, StatusCode.UNAVAILABLE, StatusCode.DATA_LOSS, StatusCode.UNKNOWN}
)
# A request id a client sends is kept when it is this tame (it lands in logs and details).
_TAME_ID = re.compile(r"^[\w.:-]{1,128}$")

GRPC_STATUS: Mapping[type[AimeshError], StatusCode] = {
    AimeshError: StatusCode.INTERNAL,
    InvalidRequest: StatusCode.INVALID_ARGUMENT,
    RequestTooLarge: StatusCode.RESOURCE_EXHAUSTED,
    QueryTooLarge: StatusCode.RESOURCE_EXHAUSTED,
    NotFound: StatusCode.NOT_FOUND,
    MethodNotAllowed: StatusCode.UNIMPLEMENTED,
    Conflict: StatusCode.FAILED_PRECONDITION,
    ModelExists: StatusCode.ALREADY_EXISTS,
    RecordExists: StatusCode.ALREADY_EXISTS,
    # A concurrent change: re-read and retry (gRPC's rule for a failed optimistic write).
    RecordConflict: StatusCode.ABORTED,
    AliasMoved: StatusCode.ABORTED,
    JobFailed: StatusCode.ABORTED,
    ArtifactError: StatusCode.INVALID_ARGUMENT,
    ArtifactTooLarge: StatusCode.RESOURCE_EXHAUSTED,
    ArtifactTampered: StatusCode.DATA_LOSS,
    RuntimeUnavailable: StatusCode.FAILED_PRECONDITION,
    Unauthorized: StatusCode.UNAUTHENTICATED,
    Forbidden: StatusCode.PERMISSION_DENIED,
    OriginRefused: StatusCode.PERMISSION_DENIED,
    Overloaded: StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: StatusCode.UNAVAILABLE,
    CircuitOpen: StatusCode.UNAVAILABLE,
    UpstreamError: StatusCode.UNAVAILABLE,
    UpstreamTimeout: StatusCode.DEADLINE_EXCEEDED,
    DeadlineExceeded: StatusCode.DEADLINE_EXCEEDED,
}
"""From an error class to its gRPC status; a class not listed takes its nearest ancestor's."""


def grpc_status_of(exc: AimeshError) -> StatusCode:
    """The gRPC status of ``exc``: its class's, else that of the nearest listed ancestor."""
    for cls in type(exc).__mro__:
        status = GRPC_STATUS.get(cls)
        if status is not None:
            return status
    return StatusCode.INTERNAL  # not reached: AimeshError is listed


def grpc_details(exc: AimeshError, request_id: str) -> str:
    """The details of a gRPC error: ``message (code; request_id ID)``.

    A server error's message tells of the server's own parts: where they live (URLs,
    paths) is for the log.
    """
    message = exc.message
    if grpc_status_of(exc) in _SERVER_FAULTS:
        message = hide_server_names(message)
    return f"{message} ({exc.code}; request_id {request_id})"


def internal_details(request_id: str) -> str:
    """The details of an unexpected failure: nothing but the request id to look for."""
    return f"internal error; the service log has it under request id {request_id}"


def request_id_in(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The call's ``x-request-id`` when tame, else a new one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and _TAME_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex

"""gRPC's ``ModelInfer`` as OIP REST and back, for the gateway's gRPC adapter.

The adapter sends a ModelInfer to an instance's REST port (see :mod:`aimesh.gateway.grpc`
for why): the request becomes an OIP REST body with every tensor as binary data, outputs
asked for the same way, so nothing is lost either way; the instance's answer (or error)
becomes a ``ModelInferResponse`` (or the error class its code names). A static fallback's
answer, which the core gives as REST JSON (:func:`~aimesh.gateway.core.static_answer`),
is converted the same way.
"""

from __future__ import annotations

import json
from typing import Any

from aimesh.config import Fallback
from aimesh.errors import (
    AimeshError,
    InvalidRequest,
    UpstreamError,
    error_from_body,
    foreign_message,
)
from aimesh.gateway.core import static_answer
from aimesh.protocol import grpc as pb
from aimesh.protocol import rest_codec

__all__ = [
    "HEADER_LENGTH",
    "error_of",
    "infer_response",
    "rest_headers",
    "rest_request",
    "static_response",
]

HEADER_LENGTH = b"inference-header-content-length"


def rest_request(message: Any) -> tuple[bytes, int | None]:
    """The OIP REST body for a ModelInferRequest (tensors as binary data, outputs asked so)
    and the length of its JSON header."""
    request = pb.request_from_pb(message)
    # Binary both ways: exact, and no JSON number formatting on either side.
    request.parameters = {**request.parameters, "binary_data_output": True}
    return rest_codec.encode_request(request, binary=True)


def rest_headers(
    metadata: list[tuple[str, str]], header_length: int | None
) -> list[tuple[bytes, bytes]]:
    """The headers of a ModelInfer sent over REST: the call's metadata, and the body's
    type (JSON, or binary tensors after a JSON header of ``header_length`` bytes)."""
    headers = [(key.encode(), value.encode()) for key, value in metadata]
    if header_length is None:
        headers.append((b"content-type", b"application/json"))
    else:
        headers.append((b"content-type", b"application/octet-stream"))
        headers.append((HEADER_LENGTH, str(header_length).encode()))
    return headers


def infer_response(body: bytes, header_length: int | None) -> bytes:
    """The serialized ``ModelInferResponse`` of an instance's 200 over REST; raises
    :class:`UpstreamError` when it cannot be read."""
    try:
        decoded = rest_codec.decode_response(body, header_length=header_length)
    except (InvalidRequest, ValueError) as exc:
        raise UpstreamError(
            f"the instance answered an unreadable response: {foreign_message(exc)}"
        ) from exc
    serialized: bytes = pb.response_to_pb(decoded).SerializeToString()
    return serialized


def error_of(status: int, body: bytes) -> AimeshError:
    """The error an instance answered over REST, as the class the gRPC status comes from."""
    try:
        found = json.loads(body)
        return error_from_body(str(found["code"]), str(found["error"]))
    except (ValueError, KeyError, TypeError):
        return UpstreamError(f"the instance answered HTTP {status}")


def static_response(model: str, fallback: Fallback) -> bytes:
    """A static fallback's answer as a serialized ``ModelInferResponse``."""
    return infer_response(static_answer(model, fallback), None)

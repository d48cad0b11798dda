"""What the gateway reads from a request's headers, and what it passes on.

One pass over the headers finds the request id, the W3C trace context, the credentials, the
length and what the edge checks (Host, Origin, Content-Type), and builds the list forwarded
upstream: everything but hop-by-hop headers and what this hop re-makes (the request's
deadline, ``x-aimesh-deadline-ms``, is sent on as the time left when the call is made).
The caller's credentials go on unchanged: every service checks them again on its own port. A request
without an ``x-request-id`` gets one; one without a valid ``traceparent`` starts a trace
whose id is the request id, so logs and traces meet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from aimesh.auth import IDENTITY_HEADER
from aimesh.resilience import DEADLINE_HEADER

__all__ = ["RequestHead", "new_request_id", "traceparent_for", "valid_traceparent"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

# Lower-case names (ASGI servers give them so) that are not forwarded as they came.
_NOT_FORWARDED = frozenset(
    {
        b"host", b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
        b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect", b"content-length",
        b"x-request-id", b"traceparent",
        DEADLINE_HEADER.encode(),  # re-made: the time left when each call is made
        b"origin",  # judged here (aimesh.rest.guard); an upstream would judge it by its own Host
    }
)  # fmt: skip
_MAX_REQUEST_ID = 128
_IDENTITY = IDENTITY_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()


def new_request_id() -> str:
    """A fresh request id: 32 random hex digits (also a valid W3C trace id)."""
    return os.urandom(16).hex()  # a third of uuid4().hex's cost, as random


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a W3C ``traceparent`` worth passing on."""
    return (
        len(value) == 55
        and _TRACEPARENT.fullmatch(value) is not None
        and not value.startswith("ff")
        and value[3:35] != _ZERO_TRACE
        and value[36:52] != _ZERO_SPAN
    )


def traceparent_for(request_id: str) -> str:
    """A new sampled ``traceparent``, its trace id taken from the request id when it can be."""
    trace_id = request_id if len(request_id) == 32 and _is_hex(request_id) else new_request_id()
    if trace_id == _ZERO_TRACE:
        trace_id = new_request_id()
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return text.islower() or text.isdigit()


def _printable(value: bytes) -> bool:
    # Echoed in the response: anything but visible ASCII would make an invalid header.
    return value.isascii() and value.decode("ascii").isprintable()


class RequestHead:
    """The headers of one request, as the gateway needs them."""

    __slots__ = (
        "api_key",
        "authorization",
        "content_length",
        "content_type",
        "deadline",
        "forward",
        "host",
        "idempotency_key",
        "on_behalf",
        "origin",
        "prefer",
        "request_id",
        "traceparent",
        "tracestate",
    )

    def __init__(self) -> None:
        self.request_id = ""
        self.traceparent = ""
        self.tracestate: bytes | None = None
        self.api_key: str | None = None
        self.authorization: str | None = None
        self.on_behalf: str | None = None
        """The identity header (believed only with the service credential)."""
        self.content_length: int | None = None
        self.host: bytes | None = None
        self.origin: bytes | None = None
        self.content_type: bytes | None = None
        """``Host``, ``Origin`` and ``Content-Type`` as sent, for the edge's checks."""
        self.prefer: bytes | None = None
        """The ``Prefer`` header (``respond-async`` asks for an async call), passed on too."""
        self.idempotency_key: str | None = None
        self.deadline: bytes | None = None
        """The ``x-aimesh-deadline-ms`` header as sent (read by the routes that honour it)."""
        self.forward: list[tuple[bytes, bytes]] = []
        """The headers to send upstream, request id and traceparent included."""

    @classmethod
    def read(cls, headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
        """Read ASGI headers (lower-case names, latin-1 values) in one pass."""
        head = cls()
        forward = head.forward
        request_id = traceparent = None
        for name, value in headers:
            if name not in _NOT_FORWARDED:
                forward.append((name, value))
                if name == b"tracestate":
                    head.tracestate = value
                elif name == b"prefer":
                    head.prefer = value
                elif name == b"idempotency-key":
                    head.idempotency_key = value.decode("latin-1")
                elif name == b"content-type":
                    head.content_type = value
                elif name == b"x-api-key":
                    head.api_key = value.decode("latin-1")
                elif name == b"authorization":
                    head.authorization = value.decode("latin-1")
                elif name == _IDENTITY:
                    head.on_behalf = value.decode("latin-1")
            elif name == b"x-request-id":
                request_id = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"host":
                head.host = value
            elif name == b"origin":
                head.origin = value
            elif name == b"content-length":
                head.content_length = int(value) if value.isdigit() else None
            elif name == _DEADLINE:
                head.deadline = value
        if request_id and len(request_id) <= _MAX_REQUEST_ID and _printable(request_id):
            head.request_id = request_id.decode("latin-1")
            generated = False
        else:
            head.request_id = new_request_id()
            generated = True
        if traceparent and valid_traceparent(text := traceparent.decode("latin-1")):
            head.traceparent = text
        elif generated:  # our own id is a valid trace id already
            head.traceparent = f"00-{head.request_id}-{os.urandom(8).hex()}-01"
        else:
            head.traceparent = traceparent_for(head.request_id)
        forward.append((b"x-request-id", head.request_id.encode("latin-1")))
        forward.append((b"traceparent", head.traceparent.encode()))
        return head

    @property
    def forward_credentials(self) -> list[tuple[bytes, bytes]]:
        """The caller's key and identity header, as it sent them."""
        pairs = []
        if self.api_key is not None:
            pairs.append((b"x-api-key", self.api_key.encode("latin-1")))
        if self.authorization is not None:
            pairs.append((b"authorization", self.authorization.encode("latin-1")))
        if self.on_behalf is not None:
            pairs.append((_IDENTITY, self.on_behalf.encode("latin-1")))
        return pairs

    @property
    def forward_tracing(self) -> list[tuple[bytes, bytes]]:
        """Only the request id and trace context (for requests the gateway makes itself)."""
        pairs = [
            (b"x-request-id", self.request_id.encode("latin-1")),
            (b"traceparent", self.traceparent.encode()),
        ]
        if self.tracestate is not None:
            pairs.append((b"tracestate", self.tracestate))
        return pairs

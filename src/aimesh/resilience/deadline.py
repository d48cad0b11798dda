"""A request's deadline: an absolute monotonic time, which travels downstream.

Between processes it travels as the time left, not a clock reading (clocks of two
machines do not agree): over HTTP in the ``x-aimesh-deadline-ms`` header (whole
milliseconds left, rounded down), over gRPC as the call's own deadline (its timeout is
:meth:`Deadline.grpc_timeout`). A service that reads it never works on a request its
caller has given up on, and a call's timeout is never beyond it (:meth:`Deadline.timeout`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aimesh.errors import InvalidRequest

__all__ = ["DEADLINE_HEADER", "Deadline", "deadline_header_value"]

DEADLINE_HEADER = "x-aimesh-deadline-ms"
"""The HTTP header of a request's deadline: whole milliseconds left when it was sent."""


def deadline_header_value(left_s: float) -> str:
    """The ``x-aimesh-deadline-ms`` value of ``left_s`` seconds left (rounded down)."""
    return str(math.floor(left_s * 1000.0)) if left_s > 0.0 else "0"


# Up to ~115 days: the header is a time left, not an epoch, and a longer one is an error.
_MAX_DIGITS = 10


@dataclass(frozen=True, slots=True)
class Deadline:
    """The monotonic time (seconds) by which a request must be answered."""

    at: float

    @classmethod
    def after(cls, seconds: float, now: float) -> Deadline:
        """The deadline ``seconds`` from ``now``."""
        return cls(now + seconds)

    @classmethod
    def from_header(cls, value: str | bytes, now: float) -> Deadline:
        """The deadline an ``x-aimesh-deadline-ms`` value gives, counted from ``now``.

        Raises :class:`InvalidRequest` unless it is whole milliseconds (0 is a deadline
        already passed).
        """
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip()
        if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
            raise InvalidRequest(
                f"{DEADLINE_HEADER} must be the whole milliseconds left (e.g. 250), "
                f"not {text[:40]!r}",
                header=DEADLINE_HEADER,
            )
        return cls(now + int(text) / 1000.0)

    def remaining(self, now: float) -> float:
        """Seconds left at ``now`` (0 once passed)."""
        left = self.at - now
        return left if left > 0.0 else 0.0

    def expired(self, now: float) -> bool:
        """Whether the deadline has passed at ``now``."""
        return now >= self.at

    def timeout(self, call_timeout_s: float, now: float) -> float:
        """The timeout of one call made at ``now``: its own, never beyond the deadline."""
        left = self.at - now
        return call_timeout_s if call_timeout_s < left else max(left, 0.0)

    def header_value(self, now: float) -> str:
        """The ``x-aimesh-deadline-ms`` value to send at ``now`` (rounded down)."""
        return deadline_header_value(self.at - now)

    def grpc_timeout(self, now: float) -> float:
        """The ``timeout`` (seconds) of a gRPC call made at ``now`` so that its deadline is
        this one; gRPC carries it to the server as the call's deadline."""
        return self.remaining(now)

    def earliest(self, other: Deadline | None) -> Deadline:
        """The sooner of this deadline and ``other``."""
        return self if other is None or self.at <= other.at else other

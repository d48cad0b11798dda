"""Bulkheads: a limit of calls in flight per upstream instance, refused at once when full.

A slow or stuck instance holds its callers' requests; the bulkhead keeps it from holding
all of them (the gateway's connections, its memory), and tells callers at once (503 with
``Retry-After``, :class:`~aimesh.errors.Overloaded`) instead of letting them queue.
"""

from __future__ import annotations

from aimesh.errors import Overloaded

__all__ = ["Bulkheads"]


class Bulkheads:
    """Calls in flight by instance key, each within the limit given when it enters."""

    __slots__ = ("_in_flight",)

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}  # only instances with calls in flight

    def try_enter(self, instance: str, limit: int) -> bool:
        """Count one more call on ``instance`` if fewer than ``limit`` are in flight."""
        in_flight = self._in_flight.get(instance, 0)
        if in_flight >= limit:
            return False
        self._in_flight[instance] = in_flight + 1
        return True

    def enter(self, instance: str, limit: int) -> None:
        """Count one more call on ``instance``, or raise :class:`Overloaded` when it is full."""
        if not self.try_enter(instance, limit):
            raise Overloaded(
                f"an upstream instance has {limit} requests in flight already; retry shortly",
                limit=limit,
            )

    def leave(self, instance: str) -> None:
        """A call on ``instance`` ended."""
        in_flight = self._in_flight[instance] - 1
        if in_flight:
            self._in_flight[instance] = in_flight
        else:
            del self._in_flight[instance]

    def in_flight(self, instance: str) -> int:
        """Calls in flight on ``instance`` now."""
        return self._in_flight.get(instance, 0)

    def snapshot(self) -> dict[str, int]:
        """Calls in flight by instance (those with any)."""
        return dict(self._in_flight)

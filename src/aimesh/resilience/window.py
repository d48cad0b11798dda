"""Sliding windows of call outcomes for the breaker: counts kept as totals, O(1) per call.

Both keep ``calls``, ``failures`` and ``slow`` as running totals, so that the breaker reads
its rates without summing anything. :class:`CountWindow` holds the last ``size`` calls in a
ring of one byte each; :class:`TimeWindow` the calls of the last ``size`` seconds, in a ring
of one-second buckets that are emptied as the clock passes them.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CountWindow", "OutcomeWindow", "TimeWindow"]

_TAKEN, _FAILED, _SLOW = 1, 2, 4


class OutcomeWindow(Protocol):
    """The running totals of the outcomes a window holds."""

    calls: int
    failures: int
    slow: int

    def add(self, failed: bool, slow: bool, now: float) -> None:
        """Count one call's outcome at ``now``."""
        ...

    def expire(self, now: float) -> None:
        """Drop what fell out of the window by ``now`` (a count window keeps everything)."""
        ...

    def clear(self) -> None:
        """Forget every outcome."""
        ...


class CountWindow:
    """The last ``size`` calls: a ring of outcome bytes, the oldest overwritten."""

    __slots__ = ("_next", "_ring", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a window holds at least one call")
        self._ring = bytearray(size)
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        """Count one call, dropping the oldest when the ring is full."""
        ring, i = self._ring, self._next
        old = ring[i]
        if old:
            self.calls -= 1
            if old & _FAILED:
                self.failures -= 1
            if old & _SLOW:
                self.slow -= 1
        code = _TAKEN
        self.calls += 1
        if failed:
            code |= _FAILED
            self.failures += 1
        if slow:
            code |= _SLOW
            self.slow += 1
        ring[i] = code
        self._next = i + 1 if i + 1 < len(ring) else 0

    def expire(self, now: float) -> None:
        """Nothing expires by time in a count window."""

    def clear(self) -> None:
        """Forget every call."""
        self._ring[:] = bytes(len(self._ring))
        self._next = 0
        self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The calls of the last ``size`` whole seconds (the current one included)."""

    __slots__ = ("_calls", "_failures", "_head", "_slow", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a window spans at least one second")
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._head: int | None = None  # the second the newest bucket is for
        self.calls = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        """Count one call in the bucket of ``now``'s second."""
        self.expire(now)
        i = self._index()
        self._calls[i] += 1
        self.calls += 1
        if failed:
            self._failures[i] += 1
            self.failures += 1
        if slow:
            self._slow[i] += 1
            self.slow += 1

    def expire(self, now: float) -> None:
        """Empty the buckets of the seconds that passed since the newest one.

        At most ``size`` buckets a call, and only when the second changed: O(1) amortized.
        """
        second = int(now)
        head = self._head
        if head is None:
            self._head = second
            return
        if second <= head:
            return  # the same second (a monotonic clock never goes back)
        size = len(self._calls)
        for passed in range(head + 1, head + 1 + min(second - head, size)):
            i = passed % size
            self.calls -= self._calls[i]
            self.failures -= self._failures[i]
            self.slow -= self._slow[i]
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._head = second

    def _index(self) -> int:
        assert self._head is not None
        return self._head % len(self._calls)

    def clear(self) -> None:
        """Forget every call."""
        size = len(self._calls)
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._head = None
        self.calls = self.failures = self.slow = 0

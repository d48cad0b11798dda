"""Retries: how long to wait before one (full jitter), and how many may run (the budget).

A retry budget, as Envoy's: retries in flight are at most a share (``budget_ratio``) of
the requests in flight, with a floor (``budget_min``) so that a quiet route can still
retry. In an outage, when every request fails, retries then add at most that share to the
upstream's load instead of multiplying it by the number of attempts.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["RetryBudget", "backoff_s"]


class RetryBudget:
    """Requests and retries in flight on one route; a retry goes only within the budget.

    The caller counts each request in (:meth:`start`) and out (:meth:`end`), and each
    retry it is granted (:meth:`try_retry`) out again (:meth:`retry_done`).
    """

    __slots__ = ("_min", "_ratio", "active", "retries")

    def __init__(self, ratio: float, minimum: int) -> None:
        self._ratio = ratio
        self._min = minimum
        self.active = 0
        """Requests in flight (their retries included)."""
        self.retries = 0
        """Retries in flight."""

    def start(self) -> None:
        """A request begins."""
        self.active += 1

    def end(self) -> None:
        """A request ended."""
        self.active -= 1

    def try_retry(self) -> bool:
        """Take a place for one retry, if the budget has one."""
        if self.retries < self._min or self.retries < self._ratio * self.active:
            self.retries += 1
            return True
        return False

    def retry_done(self) -> None:
        """A retry granted by :meth:`try_retry` ended (or was not made)."""
        self.retries -= 1


def backoff_s(retry: int, base_s: float, max_s: float, random: Callable[[], float]) -> float:
    """The wait before retry number ``retry`` (1 for the first): full jitter, drawn at random
    below ``base_s * 2 ** (retry - 1)`` capped at ``max_s``; ``random`` gives [0, 1)."""
    cap = min(max_s, base_s * 2.0 ** min(retry - 1, 62))
    return random() * cap

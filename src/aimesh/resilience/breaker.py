"""The circuit breaker: closed, open and half-open, over a sliding window of outcomes.

::

    closed ──failure or slow-call rate ≥ threshold, window ≥ min_calls──▶ open
      ▲                                                                 │ │
      │                                                    open_s passed│ ▲ probes' rate
      └───────────────probes' rates under the thresholds──── half_open ◀┘ │ ≥ threshold
                                                                 └────────┘

A call asks :meth:`CircuitBreaker.try_acquire` for a permit and hands it back with its
outcome (:meth:`~CircuitBreaker.record`) or without one (:meth:`~CircuitBreaker.release`:
the call was not made, or says nothing of the upstream). A permit names the state it was
granted in (a generation that grows at every change): an outcome of an older generation
(a call that started before the breaker opened) changes nothing. Half-open grants at most
``probes`` permits in all, so at most that many probes run at once and at most that many
outcomes decide; a probe handed back without an outcome frees its place for another.

The breaker takes the time as an argument (``now``, monotonic seconds) and does no I/O:
the state machine is tested under a fake clock, and every change goes to a listener as a
:class:`~aimesh.resilience.StateChange` carrying the figures that drove it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from aimesh.config import BreakerSettings, ResilienceSettings
from aimesh.resilience.events import Listener, StateChange
from aimesh.resilience.outcomes import FAILURE, IGNORED, Outcome
from aimesh.resilience.window import CountWindow, OutcomeWindow, TimeWindow

__all__ = [
    "BreakerKey",
    "BreakerSnapshot",
    "BreakerState",
    "Breakers",
    "CircuitBreaker",
    "Permit",
]

Permit = int
"""What :meth:`CircuitBreaker.try_acquire` grants: the breaker's generation at the time."""

# Rates are compared with a little slack, so that 3 failures of 10 meet a 0.3 threshold.
_EPSILON = 1e-9


class BreakerState(StrEnum):
    """The state of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class BreakerKey(NamedTuple):
    """What a breaker guards: a route of the gateway, to a model (or service) version."""

    route: str
    model: str
    version: str
    """The version the instances serve; empty when they name none."""


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """One breaker as ``aimesh breakers`` shows it."""

    route: str
    model: str
    version: str
    state: BreakerState
    calls: int
    """Calls in the window (closed), or probe outcomes so far (half-open)."""
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    rejected: int
    """Calls refused since the breaker last opened."""
    probes_in_flight: int
    until: float | None
    """Monotonic time when an open breaker lets probes through."""


def _over(count: int, calls: int, rate: float) -> bool:
    return count >= rate * calls - _EPSILON


class CircuitBreaker:
    """One breaker; see the module's docstring for its states and permits."""

    __slots__ = (
        "_by_time",
        "_failure_rate",
        "_generation",
        "_listener",
        "_min_calls",
        "_open_s",
        "_open_until",
        "_probe_calls",
        "_probe_failures",
        "_probe_slow",
        "_probes",
        "_probes_out",
        "_rejected",
        "_slow_call_rate",
        "_slow_call_s",
        "_state",
        "_window",
        "key",
    )

    def __init__(
        self, key: BreakerKey, settings: BreakerSettings, listener: Listener | None = None
    ) -> None:
        self.key = key
        self._listener = listener
        self._window: OutcomeWindow = (
            CountWindow(settings.window_size)
            if settings.window == "count"
            else TimeWindow(settings.window_size)
        )
        self._by_time = settings.window == "time"
        self._min_calls = settings.min_calls
        self._failure_rate = settings.failure_rate
        self._slow_call_s = settings.slow_call_s
        self._slow_call_rate = settings.slow_call_rate
        self._open_s = settings.open_s
        self._probes = settings.probes
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._open_until = 0.0
        self._rejected = 0
        self._probes_out = 0  # half-open permits granted and not handed back
        self._probe_calls = self._probe_failures = self._probe_slow = 0

    @property
    def state(self) -> BreakerState:
        """The state as last changed (an open breaker turns half-open at its next call)."""
        return self._state

    def try_acquire(self, now: float) -> Permit | None:
        """A permit to make one call, or None when the breaker refuses it."""
        state = self._state
        if state is _CLOSED:
            return self._generation
        if state is _OPEN:
            if now < self._open_until:
                self._rejected += 1
                return None
            self._half_open(now)
        if self._probes_out < self._probes:
            self._probes_out += 1
            return self._generation
        self._rejected += 1
        return None

    def release(self, permit: Permit) -> None:
        """Hand back a permit whose call was not made, or whose outcome says nothing."""
        if permit == self._generation and self._state is _HALF_OPEN:
            self._probes_out -= 1

    def record(self, permit: Permit, outcome: Outcome, duration_s: float, now: float) -> None:
        """Count the outcome of the call ``permit`` let through, which took ``duration_s``."""
        if outcome is IGNORED:
            self.release(permit)
            return
        if permit != self._generation:
            return  # granted before the last change: it decides nothing now
        failed = outcome is FAILURE
        slow = duration_s >= self._slow_call_s
        if self._state is _CLOSED:
            window = self._window
            window.add(failed, slow, now)
            calls = window.calls
            # In a count window a fast success cannot raise a rate (it matters only when it
            # makes min_calls); in a time window it can, by pushing old successes out.
            if calls >= self._min_calls and (
                failed or slow or calls == self._min_calls or self._by_time
            ):
                if _over(window.failures, calls, self._failure_rate):
                    self._open(now, "failure_rate")
                elif _over(window.slow, calls, self._slow_call_rate):
                    self._open(now, "slow_call_rate")
            return
        # Half-open (an open breaker grants no permit of its own generation).
        self._probe_calls += 1
        self._probe_failures += failed
        self._probe_slow += slow
        # Decided as soon as the rest of the probes could not change the outcome.
        if _over(self._probe_failures, self._probes, self._failure_rate):
            self._reopen(now, "probe_failure_rate")
        elif _over(self._probe_slow, self._probes, self._slow_call_rate):
            self._reopen(now, "probe_slow_call_rate")
        elif self._probe_calls >= self._probes:
            self._close(now)

    def retry_after(self, now: float) -> float:
        """Seconds until a refused call may be let through (the wait, or a probe's end)."""
        if self._state is BreakerState.OPEN and now < self._open_until:
            return self._open_until - now
        return min(1.0, self._open_s)

    def snapshot(self, now: float) -> BreakerSnapshot:
        """The breaker's state and figures at ``now`` (read only)."""
        state = self._state
        until: float | None = None
        if state is BreakerState.HALF_OPEN:
            calls, failures, slow = self._probe_calls, self._probe_failures, self._probe_slow
        else:
            if state is BreakerState.CLOSED:
                self._window.expire(now)
            calls, failures, slow = self._window.calls, self._window.failures, self._window.slow
            if state is BreakerState.OPEN:
                if now >= self._open_until:
                    state = BreakerState.HALF_OPEN  # as the next call will find it
                else:
                    until = self._open_until
        probing = self._state is BreakerState.HALF_OPEN
        in_flight = self._probes_out - self._probe_calls if probing else 0
        return BreakerSnapshot(
            route=self.key.route,
            model=self.key.model,
            version=self.key.version,
            state=state,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            rejected=self._rejected,
            probes_in_flight=in_flight,
            until=until,
        )

    # The changes.

    def _open(self, now: float, reason: str) -> None:
        window = self._window
        calls = window.calls
        figures = {
            "calls": calls,
            "failures": window.failures,
            "slow_calls": window.slow,
            "failure_rate": window.failures / calls,
            "slow_call_rate": window.slow / calls,
            "failure_threshold": self._failure_rate,
            "slow_call_threshold": self._slow_call_rate,
            "min_calls": self._min_calls,
            "open_s": self._open_s,
        }
        self._change(BreakerState.OPEN, now, reason, figures, until=now + self._open_s)

    def _half_open(self, now: float) -> None:
        figures = {"open_s": self._open_s, "rejected": self._rejected}
        self._probes_out = self._probe_calls = self._probe_failures = self._probe_slow = 0
        self._change(BreakerState.HALF_OPEN, now, "wait_elapsed", figures, until=None)

    def _reopen(self, now: float, reason: str) -> None:
        figures = self._probe_figures()
        figures["open_s"] = self._open_s
        self._change(BreakerState.OPEN, now, reason, figures, until=now + self._open_s)

    def _close(self, now: float) -> None:
        self._window.clear()
        self._change(BreakerState.CLOSED, now, "probes_passed", self._probe_figures(), None)

    def _probe_figures(self) -> dict[str, float]:
        return {
            "probes": self._probes,
            "calls": self._probe_calls,
            "failures": self._probe_failures,
            "slow_calls": self._probe_slow,
            "failure_threshold": self._failure_rate,
            "slow_call_threshold": self._slow_call_rate,
        }

    def _change(
        self,
        to: BreakerState,
        now: float,
        reason: str,
        figures: dict[str, float],
        until: float | None,
    ) -> None:
        old = self._state
        self._state = to
        self._generation += 1
        if to is BreakerState.OPEN:
            assert until is not None
            self._open_until = until
            self._rejected = 0
        if self._listener is not None:
            self._listener(
                StateChange("breaker", self.key, old.value, to.value, reason, now, until, figures)
            )


class Breakers:
    """Every breaker of a gateway, by :class:`BreakerKey`, made on first use with the
    settings of the key's route (:meth:`ResilienceSettings.for_route` of its model)."""

    def __init__(
        self,
        settings: ResilienceSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._listener = listener
        self._breakers: dict[BreakerKey, CircuitBreaker] = {}

    def get(self, key: BreakerKey) -> CircuitBreaker:
        """The breaker of ``key``, made if it is new."""
        breaker = self._breakers.get(key)
        if breaker is None:
            settings = self._settings.for_route(key.model).breaker
            breaker = self._breakers[key] = CircuitBreaker(key, settings, self._listener)
        return breaker

    def discard(self, key: BreakerKey) -> None:
        """Forget the breaker of ``key`` (its version is gone); a new call starts afresh."""
        self._breakers.pop(key, None)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self, now: float | None = None) -> list[BreakerSnapshot]:
        """Every breaker's state and figures, by key, for ``aimesh breakers``."""
        at = self._clock() if now is None else now
        return [self._breakers[key].snapshot(at) for key in sorted(self._breakers)]

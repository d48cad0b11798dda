"""The resilience layer's one executor: deadline, then retry, then breaker, then bulkhead,
then the call.

:meth:`Resilience.call` runs a caller's ``attempt(candidate, timeout_s)`` on candidate
instances, each attempt going through the layers in a fixed order, outermost first:

1. **Deadline.** Before each attempt: none starts once the deadline has passed, and each
   attempt's timeout is the route's call timeout cut to the time left. Outermost, so that
   no retry and no backoff outlives the caller's deadline.
2. **Retry.** After a failed attempt: another attempt only for a call safe to repeat,
   within the route's attempts and its retry budget, after a full-jitter backoff that must
   end before the deadline, on an instance not tried yet when there is one. (A request
   that never reached its instance, ``rules.not_sent``, moves to an untried one at once,
   whatever the call: nothing was run.) Outside the breaker, so that every retry asks the
   breaker again: a retry never bypasses an open breaker.
3. **Breaker** of the route and version (:class:`~aimesh.resilience.CircuitBreaker`):
   open, the call is refused at once with :class:`~aimesh.errors.CircuitOpen` (after a
   failed attempt, that attempt's own outcome is returned or raised instead).
4. **Instance choice and bulkhead.** Ejected instances are passed over (unless all are:
   then ejection is ignored, as Envoy's panic threshold); the instance's bulkhead must
   have room, else another with room is chosen, else :class:`~aimesh.errors.Overloaded`
   (the breaker's permit is handed back: a call not made counts for nothing). Inside the
   breaker, so that an open breaker costs no bulkhead place.
5. **The call**, whose outcome (``rules.classify`` for a result, ``rules.classify_error``
   for an exception, slow by its duration) goes to the ejection table (the instance's
   health) and, unless it is a failure that is retried, to the breaker (the version's
   health, as callers see it): a dead replica among live ones is ejected, its requests
   answered by the others, and the version's breaker stays closed; a version whose every
   instance fails opens it.

A failed result (a 5xx answer) that is not retried is returned as it is; a failed one that
is retried is handed to ``rules.discard`` when the retry goes ahead (to release a streaming
body). An exception the caller caused (``classify_error`` says it is not a failure) is
raised at once: another attempt would fare no better. A cancelled call (the caller went
away) counts for nothing and hands its places back.

Pure logic: the clock, the sleep and the random source are injected; no I/O but the
caller's own attempt. The attempt enforces ``timeout_s`` itself (the gateway's clients
take a timeout): wrapping every call in a timer of our own would cost a timer per call.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from aimesh.config import ResilienceSettings
from aimesh.errors import CircuitOpen, DeadlineExceeded, Overloaded
from aimesh.resilience.breaker import BreakerKey, Breakers, CircuitBreaker
from aimesh.resilience.bulkhead import Bulkheads
from aimesh.resilience.deadline import Deadline
from aimesh.resilience.events import Listener
from aimesh.resilience.outcomes import FAILURE, SUCCESS, Outcome, classify_exception
from aimesh.resilience.outliers import OutlierDetector
from aimesh.resilience.retry import RetryBudget, backoff_s

__all__ = ["Attempt", "CallRules", "Resilience", "first_candidate"]

C = TypeVar("C")
R = TypeVar("R")

Attempt = Callable[[C, float], Awaitable[R]]
"""Makes one attempt on one candidate within ``timeout_s`` seconds, and returns its result."""


def first_candidate(candidates: Sequence[Any], now: float) -> Any:
    """The first candidate (the default choice; the gateway passes its instance policy)."""
    return candidates[0]


def _success(result: Any) -> Outcome:
    return SUCCESS


def _never(exc: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class CallRules(Generic[C, R]):
    """How calls of one kind are made and judged: made once per adapter, not per call."""

    instance_key: Callable[[C], str]
    """The candidate's instance key (ejection and bulkheads count by it)."""
    choose: Callable[[Sequence[C], float], C] = first_candidate
    """Chooses one of several candidates (never none) at ``now``: an ``InstancePolicy``."""
    classify: Callable[[R], Outcome] = _success
    """A result's outcome (e.g. ``classify_status(response.status)``)."""
    classify_error: Callable[[BaseException], Outcome] = classify_exception
    """An exception's outcome."""
    not_sent: Callable[[BaseException], bool] = _never
    """Whether an exception says the request certainly never reached the instance."""
    discard: Callable[[R], Awaitable[None]] | None = None
    """Releases a failed result that is retried (e.g. closes a streaming body)."""


class _Lane:
    """What calls of one breaker key share: their breaker, budget and route settings."""

    __slots__ = (
        "attempts", "backoff_max_s", "backoff_s", "breaker", "budget", "bulkhead", "model",
        "service", "timeout_s", "version",
    )  # fmt: skip

    def __init__(self, breaker: CircuitBreaker, settings: ResilienceSettings, timeout_s: float):
        key = breaker.key
        self.breaker = breaker
        self.model = key.model
        self.version = key.version
        self.service = f"{key.model}@{key.version}" if key.version else key.model
        retry = settings.retry
        self.budget = RetryBudget(retry.budget_ratio, retry.budget_min)
        self.attempts = retry.attempts
        self.backoff_s = retry.backoff_s
        self.backoff_max_s = retry.backoff_max_s
        self.bulkhead = settings.bulkhead.max_concurrent
        self.timeout_s = settings.timeout_s if settings.timeout_s is not None else timeout_s


class Resilience:
    """Breakers, ejection, retries and bulkheads around calls to upstream instances.

    ``call_timeout_s`` is the timeout of one call where the settings set none
    (``gateway.upstream_timeout_s``). ``listener`` hears every state change of a breaker
    or an instance (:class:`~aimesh.resilience.StateChange`).
    """

    def __init__(
        self,
        settings: ResilienceSettings,
        *,
        call_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        listener: Listener | None = None,
    ) -> None:
        self.settings = settings
        self.breakers = Breakers(settings, clock=clock, listener=listener)
        self.outliers = OutlierDetector(settings.outlier, clock=clock, listener=listener)
        self.bulkheads = Bulkheads()
        self._call_timeout_s = call_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._lanes: dict[BreakerKey, _Lane] = {}

    def budget(self, key: BreakerKey) -> RetryBudget:
        """The retry budget of ``key``'s calls."""
        return self._lane(key).budget

    def discard(self, key: BreakerKey) -> None:
        """Forget ``key``'s breaker and budget (its version is gone)."""
        self._lanes.pop(key, None)
        self.breakers.discard(key)

    async def call(
        self,
        key: BreakerKey,
        candidates: Sequence[C],
        attempt: Attempt[C, R],
        rules: CallRules[C, R],
        *,
        deadline: Deadline | None = None,
        idempotent: bool = True,
    ) -> R:
        """The result of ``attempt`` on one of ``candidates`` (never empty), through the
        layers in their order (see the module's docstring).

        Raises :class:`DeadlineExceeded` when the deadline passed before any attempt,
        :class:`CircuitOpen` when the breaker refused the first attempt,
        :class:`Overloaded` when no candidate's bulkhead had room; else the last attempt's
        own exception, or its result (a failed one too, when it could not be retried).
        """
        if not candidates:
            raise ValueError("a call needs at least one candidate")
        # One coroutine for the whole call, on purpose: this is the gateway's hot path.
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lane(key)
        clock = self._clock
        breaker = lane.breaker
        budget = lane.budget
        bulkheads = self.bulkheads
        tried: list[C] | None = None  # made at the first failure only
        failures = 0  # failed attempts that reached an instance
        holding_retry = False  # a place of the budget, from the decision to the retry's end
        error: BaseException | None = None
        result: R | None = None
        budget.active += 1
        try:
            while True:
                now = clock()
                # 1. The deadline.
                timeout = lane.timeout_s
                if deadline is not None:
                    left = deadline.at - now
                    if left <= 0.0:
                        if tried is None:
                            raise DeadlineExceeded(
                                "the request's deadline passed before an upstream was called"
                            )
                        return _last(error, result)
                    if left < timeout:
                        timeout = left
                # 3. The breaker.
                permit = breaker.try_acquire(now)
                if permit is None:
                    if tried is None:
                        raise CircuitOpen(
                            lane.model, lane.version or None, breaker.retry_after(now)
                        )
                    return _last(error, result)
                # 4. The instance and its bulkhead.
                if tried is not None or self.outliers.ejected:
                    candidate = self._choose(candidates, tried, rules, now)
                elif len(candidates) == 1:
                    candidate = candidates[0]
                else:
                    candidate = rules.choose(candidates, now)
                instance = rules.instance_key(candidate)
                if not bulkheads.try_enter(instance, lane.bulkhead):
                    try:
                        candidate, instance = self._other_with_room(
                            candidates, tried, rules, lane, now
                        )
                    except Overloaded:
                        breaker.release(permit)
                        if tried is None:
                            raise
                        return _last(error, result)
                # 5. The call.
                try:
                    if result is not None and rules.discard is not None:
                        # The retry goes ahead: the failed answer it replaces is let go only
                        # now, so that a retry refused above still has it to return.
                        try:
                            await rules.discard(result)
                        except BaseException:
                            breaker.release(permit)
                            raise
                        result = None
                    try:
                        value = await attempt(candidate, timeout)
                    except Exception as exc:
                        end = clock()
                        outcome = rules.classify_error(exc)
                        self._instance(lane, instance, outcome, end, candidates)
                        sent = not rules.not_sent(exc)
                        if sent and outcome is not FAILURE:
                            # The caller's fault (or none): another attempt fares no better.
                            breaker.record(permit, outcome, end - now, end)
                            raise
                        error, result = exc, None
                    except BaseException:  # cancelled: the call counts for nothing
                        breaker.release(permit)
                        raise
                    else:
                        end = clock()
                        outcome = rules.classify(value)
                        if outcome is not FAILURE:
                            breaker.record(permit, outcome, end - now, end)
                            if outcome is SUCCESS:
                                self.outliers.success(instance, end)
                            return value
                        self._instance(lane, instance, outcome, end, candidates)
                        error, result, sent = None, value, True
                    # A failed attempt: the version's breaker hears of it only if it is the
                    # call's last (below); one retried elsewhere is the instance's affair.
                    failed = (permit, outcome, end - now, end)
                finally:
                    bulkheads.leave(instance)
                    if holding_retry:
                        budget.retry_done()
                        holding_retry = False
                # 2. Retry, or not.
                if tried is None:
                    tried = []
                tried.append(candidate)
                if not sent:
                    # Nothing ran: another instance at once, if one is left untried.
                    if all(c in tried for c in candidates):
                        breaker.record(*failed)
                        return _last(error, result)
                    breaker.release(failed[0])
                    continue
                failures += 1
                delay = self._retry_delay(lane, failures, idempotent, deadline)
                if delay is None:
                    breaker.record(*failed)
                    return _last(error, result)
                breaker.release(failed[0])
                holding_retry = True
                if delay > 0.0:
                    await self._sleep(delay)
        finally:
            budget.active -= 1
            if holding_retry:
                budget.retry_done()

    def _lane(self, key: BreakerKey) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            settings = self.settings.for_route(key.model)
            lane = self._lanes[key] = _Lane(self.breakers.get(key), settings, self._call_timeout_s)
        return lane

    def _retry_delay(
        self, lane: _Lane, failures: int, idempotent: bool, deadline: Deadline | None
    ) -> float | None:
        """The wait before another attempt after ``failures`` failed ones, or None when
        there is none: the call is not safe to repeat, its attempts are spent, the wait
        would pass the deadline, or the budget has no place (taken when a wait is given)."""
        if not idempotent or failures >= lane.attempts:
            return None
        delay = backoff_s(failures, lane.backoff_s, lane.backoff_max_s, self._random)
        if deadline is not None and self._clock() + delay >= deadline.at:
            return None
        if not lane.budget.try_retry():
            return None
        return delay

    def _choose(
        self, candidates: Sequence[C], tried: list[C] | None, rules: CallRules[C, R], now: float
    ) -> C:
        """The candidate to call: one not tried yet if any is left, an instance not ejected
        if any is left (else ejection is ignored, as Envoy's panic threshold)."""
        return rules.choose(self._pool(candidates, tried, rules, now), now)

    def _pool(
        self, candidates: Sequence[C], tried: list[C] | None, rules: CallRules[C, R], now: float
    ) -> Sequence[C]:
        pool = candidates
        if tried:
            untried = [c for c in candidates if c not in tried]
            if untried:
                pool = untried
        outliers = self.outliers
        if outliers.ejected:
            key_of = rules.instance_key
            healthy = [c for c in pool if not outliers.is_ejected(key_of(c), now)]
            if healthy:
                pool = healthy
        return pool

    def _other_with_room(
        self,
        candidates: Sequence[C],
        tried: list[C] | None,
        rules: CallRules[C, R],
        lane: _Lane,
        now: float,
    ) -> tuple[C, str]:
        """A candidate whose bulkhead has room, its place taken (the one chosen first had
        none); raises :class:`Overloaded` when none has."""
        limit = lane.bulkhead
        key_of = rules.instance_key
        in_flight = self.bulkheads.in_flight
        roomy = [
            c for c in self._pool(candidates, tried, rules, now) if in_flight(key_of(c)) < limit
        ]
        if not roomy:
            raise Overloaded(
                f"every instance of {lane.service} has {limit} requests in flight already; "
                "retry shortly",
                limit=limit,
            )
        candidate = rules.choose(roomy, now)
        instance = key_of(candidate)
        self.bulkheads.enter(instance, limit)
        return candidate, instance

    def _instance(
        self, lane: _Lane, instance: str, outcome: Outcome, end: float, candidates: Sequence[Any]
    ) -> None:
        """Tell the ejection table how an attempt on ``instance`` went."""
        if outcome is Outcome.SUCCESS:
            self.outliers.success(instance, end)
        elif outcome is Outcome.FAILURE:
            self.outliers.failure(instance, end, service=lane.service, instances=len(candidates))


def _last(error: BaseException | None, result: R | None) -> R:
    """The last attempt's own outcome: its exception raised, or its result returned."""
    if error is not None:
        raise error
    return cast(R, result)

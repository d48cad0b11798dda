"""The executor under a fake clock and sleep: the order of the layers (deadline, retry,
breaker, bulkhead, call), retries on another instance within the budget and the deadline,
an open breaker short-circuiting, a full bulkhead refusing at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from aimesh.config import ResilienceSettings
from aimesh.errors import CircuitOpen, DeadlineExceeded, InvalidRequest, Overloaded
from aimesh.resilience import (
    BreakerKey,
    BreakerState,
    CallRules,
    Deadline,
    Resilience,
    StateChange,
    classify_status,
)

KEY = BreakerKey("infer", "fraud", "5")


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """The test as a plain function running it on its own event loop."""

    def sync() -> None:
        asyncio.run(test())

    sync.__name__ = sync.__qualname__ = test.__name__
    sync.__doc__ = test.__doc__
    return sync


@dataclass(eq=False)
class Inst:
    key: str


@dataclass
class Answer:
    status: int
    closed: bool = False


class Refused(Exception):
    """The request never reached the instance."""


@dataclass
class Clock:
    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def _discard(answer: Answer) -> None:
    answer.closed = True


RULES: CallRules[Inst, Answer] = CallRules(
    instance_key=lambda i: i.key,
    classify=lambda a: classify_status(a.status),
    not_sent=lambda e: isinstance(e, Refused),
    discard=_discard,
)

A, B, C = Inst("a"), Inst("b"), Inst("c")
NO_EJECTION = {"max_ejection_percent": 0}

Behaviour = int | BaseException | Callable[[], Awaitable[int]]


@dataclass
class Upstreams:
    """Each instance answers from its script (a status, an exception, or a coroutine);
    the last entry repeats. Every attempt is written down with its timeout."""

    clock: Clock
    scripts: dict[str, list[Behaviour]]
    took: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, float]] = field(default_factory=list)

    async def __call__(self, instance: Inst, timeout_s: float) -> Answer:
        self.calls.append((instance.key, round(timeout_s, 6)))
        script = self.scripts[instance.key]
        behaviour = script.pop(0) if len(script) > 1 else script[0]
        self.clock.now += self.took.get(instance.key, 0.01)
        if isinstance(behaviour, BaseException):
            raise behaviour
        if isinstance(behaviour, int):
            return Answer(behaviour)
        return Answer(await behaviour())

    @property
    def tried(self) -> list[str]:
        return [key for key, _ in self.calls]


def resilience(
    clock: Clock,
    events: list[StateChange] | None = None,
    random: float = 0.5,
    **sections: Any,
) -> Resilience:
    return Resilience(
        ResilienceSettings.model_validate(sections),
        call_timeout_s=30.0,
        clock=clock,
        sleep=clock.sleep,
        random=lambda: random,
        listener=events.append if events is not None else None,
    )


@run
async def test_a_call_that_succeeds_is_made_once_with_the_call_timeout() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [200], "b": [200]})
    answer = await resilience(clock).call(KEY, [A, B], up, RULES)
    assert answer.status == 200 and up.calls == [("a", 30.0)]


@run
async def test_a_failed_call_is_retried_on_another_instance_after_a_jittered_backoff() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [503], "b": [200]})
    first: list[Answer] = []
    rules = CallRules[Inst, Answer](
        instance_key=RULES.instance_key, classify=RULES.classify, discard=_keep(first)
    )
    answer = await resilience(clock, random=0.5).call(KEY, [A, B], up, rules)
    assert answer.status == 200 and up.tried == ["a", "b"]
    assert clock.sleeps == [0.0125]  # half (the random draw) of the first cap, 25 ms
    assert [a.status for a in first] == [503] and first[0].closed  # released, not relayed


def _keep(kept: list[Answer]) -> Callable[[Answer], Awaitable[None]]:
    async def discard(answer: Answer) -> None:
        answer.closed = True
        kept.append(answer)

    return discard


@run
async def test_backoff_caps_double_up_to_their_limit() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [500], "b": [500], "c": [500]})
    res = resilience(
        clock, random=0.999999, retry={"attempts": 5, "backoff_s": 0.1, "backoff_max_s": 0.3}
    )
    answer = await res.call(KEY, [A, B, C], up, RULES)
    assert answer.status == 500 and up.tried == ["a", "b", "c", "a", "a"]
    assert [round(s, 3) for s in clock.sleeps] == [0.1, 0.2, 0.3, 0.3]


@run
async def test_the_last_failure_is_returned_as_it_is_when_attempts_are_spent() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [502], "b": [504]})
    answer = await resilience(clock).call(KEY, [A, B], up, RULES)
    assert answer.status == 504 and not answer.closed and up.tried == ["a", "b"]


@run
async def test_a_call_not_safe_to_repeat_is_not_retried() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [TimeoutError()], "b": [200]})
    with pytest.raises(TimeoutError):
        await resilience(clock).call(KEY, [A, B], up, RULES, idempotent=False)
    assert up.tried == ["a"]


@run
async def test_a_request_that_never_reached_an_instance_moves_on_whatever_the_call() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [Refused()], "b": [Refused()], "c": [200]})
    answer = await resilience(clock).call(KEY, [A, B, C], up, RULES, idempotent=False)
    assert answer.status == 200 and up.tried == ["a", "b", "c"] and clock.sleeps == []
    up = Upstreams(clock, {"a": [Refused()], "b": [Refused()]})
    with pytest.raises(Refused):
        await resilience(clock).call(KEY, [A, B], up, RULES)
    assert up.tried == ["a", "b"]


@run
async def test_an_error_the_caller_caused_is_raised_at_once() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [InvalidRequest("bad input")], "b": [200]})
    res = resilience(clock)
    with pytest.raises(InvalidRequest):
        await res.call(KEY, [A, B], up, RULES)
    assert up.tried == ["a"]
    assert res.breakers.get(KEY).snapshot(clock.now).calls == 0  # ignored by the breaker


@run
async def test_the_budget_floor_caps_retries_in_flight() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def held() -> int:
        await release.wait()
        return 200

    up = Upstreams(clock, {"a": [500], "b": [held]})
    res = resilience(
        clock, random=0.0, retry={"budget_min": 3, "budget_ratio": 0.2}, outlier=NO_EJECTION
    )
    calls = [asyncio.ensure_future(res.call(KEY, [A, B], up, RULES)) for _ in range(10)]
    await asyncio.sleep(0)
    assert up.tried.count("b") == 3  # three retries in flight; seven failed without one
    assert res.budget(KEY).retries == 3
    release.set()
    answers = await asyncio.gather(*calls)
    assert sorted(a.status for a in answers) == [200] * 3 + [500] * 7
    assert (res.budget(KEY).retries, res.budget(KEY).active) == (0, 0)


@run
async def test_the_budget_share_grows_with_the_requests_in_flight() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def held() -> int:
        await release.wait()
        return 200

    up = Upstreams(clock, {"slow": [held], "a": [500], "b": [held]})
    res = resilience(
        clock, random=0.0, retry={"budget_min": 0, "budget_ratio": 0.2}, outlier=NO_EJECTION
    )
    waiting = [asyncio.ensure_future(res.call(KEY, [Inst("slow")], up, RULES)) for _ in range(10)]
    await asyncio.sleep(0)
    failing = [asyncio.ensure_future(res.call(KEY, [A, B], up, RULES)) for _ in range(5)]
    await asyncio.sleep(0)
    # The 11th to 13th requests find 20% of 11, 12, 13 in flight above the retries held.
    assert up.tried.count("b") == 3
    release.set()
    await asyncio.gather(*waiting, *failing)


@run
async def test_no_retry_outlives_the_deadline() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [500], "b": [200]}, took={"a": 0.9})
    res = resilience(clock, random=1.0, retry={"backoff_s": 0.2})
    answer = await res.call(KEY, [A, B], up, RULES, deadline=Deadline(1.0))
    assert answer.status == 500 and up.tried == ["a"]  # 0.9 + a 0.2 s wait passes 1.0
    assert clock.sleeps == []


@run
async def test_each_attempt_s_timeout_is_cut_to_the_time_left() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [TimeoutError()], "b": [200]}, took={"a": 1.5})
    res = resilience(clock, random=0.0, timeout_s=10)
    answer = await res.call(KEY, [A, B], up, RULES, deadline=Deadline.after(2.0, 0.0))
    assert answer.status == 200
    assert up.calls == [("a", 2.0), ("b", 0.5)]


@run
async def test_a_deadline_already_passed_calls_nothing_and_takes_no_permit() -> None:
    clock = Clock(now=5.0)
    up = Upstreams(clock, {"a": [200]})
    res = resilience(clock, breaker={"probes": 1})
    _open(res)
    clock.now = 100.0  # half-open: one probe may go
    with pytest.raises(DeadlineExceeded):
        await res.call(KEY, [A], up, RULES, deadline=Deadline(99.0))
    assert up.calls == []
    assert (await res.call(KEY, [A], up, RULES)).status == 200  # the probe was still free
    assert res.breakers.get(KEY).state is BreakerState.CLOSED


def _open(res: Resilience) -> None:
    breaker = res.breakers.get(KEY)
    while breaker.state is not BreakerState.OPEN:
        permit = breaker.try_acquire(0.0)
        assert permit is not None
        breaker.record(permit, RULES.classify(Answer(500)), 0.01, 0.0)


@run
async def test_an_open_breaker_refuses_at_once_with_circuit_open() -> None:
    clock = Clock()
    events: list[StateChange] = []
    up = Upstreams(clock, {"a": [500], "b": [500]})
    res = resilience(clock, events, breaker={"min_calls": 4, "window_size": 4})
    for _ in range(4):
        await res.call(KEY, [A, B], up, RULES)  # every instance fails: one failed call each
    assert [e.new for e in events if e.component == "breaker"] == ["open"]
    up.calls.clear()
    clock.now += 1.0
    with pytest.raises(CircuitOpen) as refused:
        await res.call(KEY, [A, B], up, RULES)
    assert up.calls == []
    assert refused.value.code == "circuit_open"
    assert refused.value.retry_after_s == pytest.approx(4.0)
    assert (refused.value.model, refused.value.version) == ("fraud", "5")


@run
async def test_a_retry_asks_the_breaker_again_and_never_bypasses_it_once_open() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def held() -> int:
        await release.wait()
        return 500

    up = Upstreams(clock, {"a": [held], "b": [200]})
    res = resilience(clock)
    call = asyncio.ensure_future(res.call(KEY, [A, B], up, RULES))
    await asyncio.sleep(0)
    _open(res)  # other calls, whose every instance failed, opened it meanwhile
    release.set()
    answer = await call
    assert answer.status == 500 and not answer.closed  # its own outcome, not CircuitOpen
    assert up.tried == ["a"]


@pytest.mark.parametrize("dead", [Refused("gone"), 503], ids=["refused", "5xx"])
def test_a_dead_instance_is_ejected_and_the_version_breaker_stays_closed(
    dead: Behaviour,
) -> None:
    asyncio.run(_a_dead_instance(dead))


async def _a_dead_instance(dead: Behaviour) -> None:
    clock = Clock()
    events: list[StateChange] = []
    up = Upstreams(clock, {"a": [dead], "b": [200]})
    res = resilience(clock, events, breaker={"min_calls": 4, "window_size": 4})
    answers = [await res.call(KEY, [A, B], up, RULES) for _ in range(12)]
    # Every caller was answered by the live instance: the attempts that failed elsewhere
    # were the instances' affair (a ejected), never the version's.
    assert [a.status for a in answers] == [200] * 12
    assert res.breakers.get(KEY).state is BreakerState.CLOSED
    assert [(e.component, e.new) for e in events] == [("outlier", "ejected")]


@run
async def test_a_full_bulkhead_refuses_at_once_and_hands_the_probe_back() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def held() -> int:
        await release.wait()
        return 200

    up = Upstreams(clock, {"a": [held, 200]})
    res = resilience(clock, breaker={"probes": 2}, bulkhead={"max_concurrent": 1})
    _open(res)
    clock.now = 10.0
    first = asyncio.ensure_future(res.call(KEY, [A], up, RULES))  # probe 1 holds the bulkhead
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as full:
        await res.call(KEY, [A], up, RULES)  # probe 2 is taken, then handed back
    assert full.value.retry_after_s == 1.0 and full.value.code == "overloaded"
    release.set()
    assert (await first).status == 200
    assert res.breakers.get(KEY).state is BreakerState.HALF_OPEN  # 1 probe of 2 so far
    assert (await res.call(KEY, [A], up, RULES)).status == 200  # the handed-back place
    assert res.breakers.get(KEY).state is BreakerState.CLOSED
    assert res.bulkheads.snapshot() == {}


@run
async def test_a_full_instance_is_passed_over_for_one_with_room() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def held() -> int:
        await release.wait()
        return 200

    up = Upstreams(clock, {"a": [held, 200], "b": [200]})
    res = resilience(clock, bulkhead={"max_concurrent": 1})
    first = asyncio.ensure_future(res.call(KEY, [A, B], up, RULES))
    await asyncio.sleep(0)
    assert (await res.call(KEY, [A, B], up, RULES)).status == 200
    assert up.tried == ["a", "b"]
    release.set()
    await first


@run
async def test_an_open_breaker_costs_no_bulkhead_place() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [200]})
    res = resilience(clock, bulkhead={"max_concurrent": 1})
    _open(res)
    res.bulkheads.enter("a", 1)  # full, too
    with pytest.raises(CircuitOpen):  # the breaker answers first
        await res.call(KEY, [A], up, RULES)
    assert res.bulkheads.in_flight("a") == 1


@run
async def test_an_ejected_instance_is_passed_over_until_it_comes_back() -> None:
    clock = Clock()
    events: list[StateChange] = []
    up = Upstreams(clock, {"a": [TimeoutError(), TimeoutError(), TimeoutError(), 200], "b": [200]})
    res = resilience(clock, events, retry={"attempts": 1})
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await res.call(KEY, [A, B], up, RULES)
    assert events[-1].component == "outlier" and events[-1].key == ("fraud@5", "a")
    up.calls.clear()
    await res.call(KEY, [A, B], up, RULES)
    assert up.tried == ["b"]  # the policy's first choice, a, is out
    clock.now += 5.0
    await res.call(KEY, [A, B], up, RULES)
    assert up.tried == ["b", "a"] and events[-1].new == "healthy"


@run
async def test_when_every_candidate_is_ejected_ejection_is_ignored() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [200]})
    res = resilience(clock)
    for _ in range(3):
        res.outliers.failure("a", 0.0, service="other", instances=2)
    assert res.outliers.is_ejected("a", 0.0)
    assert (await res.call(KEY, [A], up, RULES)).status == 200


@run
async def test_slow_calls_reach_the_breaker() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [200]}, took={"a": 2.0})
    res = resilience(clock, breaker={"slow_call_s": 1.0})
    await res.call(KEY, [A], up, RULES)
    assert res.breakers.get(KEY).snapshot(clock.now).slow_calls == 1


@run
async def test_a_cancelled_call_hands_every_place_back() -> None:
    clock = Clock()

    async def hangs() -> int:
        await asyncio.Event().wait()
        return 200

    up = Upstreams(clock, {"a": [hangs, 200]})
    res = resilience(clock, breaker={"probes": 1})
    _open(res)
    clock.now = 10.0
    call = asyncio.ensure_future(res.call(KEY, [A], up, RULES))
    await asyncio.sleep(0)
    assert res.bulkheads.in_flight("a") == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert res.bulkheads.snapshot() == {} and res.budget(KEY).active == 0
    assert (await res.call(KEY, [A], up, RULES)).status == 200  # the probe was handed back
    assert res.breakers.get(KEY).state is BreakerState.CLOSED


@run
async def test_a_route_s_own_settings_apply_to_its_calls() -> None:
    clock = Clock()
    up = Upstreams(clock, {"a": [500], "b": [500], "c": [200]})
    res = resilience(clock, routes={"fraud": {"retry": {"attempts": 3}, "timeout_s": 2}})
    assert (await res.call(KEY, [A, B, C], up, RULES)).status == 200
    assert up.calls == [("a", 2.0), ("b", 2.0), ("c", 2.0)]
    up.calls.clear()
    other = BreakerKey("infer", "other", "1")
    assert (await res.call(other, [A, B, C], up, RULES)).status == 500
    assert up.calls == [("a", 30.0), ("b", 30.0)]


@run
async def test_no_candidates_is_a_mistake_of_the_caller() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="candidate"):
        await resilience(clock).call(KEY, [], Upstreams(clock, {}), RULES)

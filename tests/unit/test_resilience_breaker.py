"""The circuit breaker as a state machine under a fake clock: every transition, the
thresholds, minimum calls, count and time windows sliding, half-open probe counting; and
property tests over any interleaving of calls."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aimesh.config import BreakerSettings, ResilienceSettings
from aimesh.resilience import (
    BreakerKey,
    Breakers,
    BreakerState,
    CircuitBreaker,
    Outcome,
    StateChange,
)

KEY = BreakerKey("infer", "fraud", "5")
OK, FAIL, IGN = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
FAST = 0.01


def breaker(events: list[StateChange] | None = None, **changes: Any) -> CircuitBreaker:
    return CircuitBreaker(
        KEY, BreakerSettings(**changes), events.append if events is not None else None
    )


def call(b: CircuitBreaker, outcome: Outcome, now: float = 0.0, duration: float = FAST) -> bool:
    """One call made and recorded at once; False when the breaker refused it."""
    permit = b.try_acquire(now)
    if permit is None:
        return False
    b.record(permit, outcome, duration, now)
    return True


def test_it_opens_once_the_failure_rate_reaches_the_threshold_after_min_calls() -> None:
    events: list[StateChange] = []
    b = breaker(events)
    for _ in range(9):  # all failures, but fewer than min_calls (10)
        assert call(b, FAIL)
    assert b.state is BreakerState.CLOSED
    assert call(b, FAIL, now=3.0)
    assert b.state is BreakerState.OPEN
    opened = events[-1]
    assert (opened.old, opened.new, opened.reason, opened.at, opened.until) == (
        "closed", "open", "failure_rate", 3.0, 8.0,
    )  # fmt: skip
    assert opened.key == ("infer", "fraud", "5")
    assert opened.figures["calls"] == 10 and opened.figures["failure_rate"] == 1.0
    assert opened.figures["failure_threshold"] == 0.5 and opened.figures["min_calls"] == 10


@pytest.mark.parametrize(
    ("outcomes", "opens"),
    [
        ("SSSSSFFFF", False),  # 4 of 9: fewer calls than min_calls
        ("SSSSSFFFFS", False),  # 4 of 10 = 40% < 50%
        ("SSSSSFFFFF", True),  # 5 of 10 = 50%: at the threshold opens
        ("FFFFFSSSSS", True),  # the 10th call (a success) makes min_calls with 50% failed
        ("SSSSSSSSSSFFFFFFFFF", False),  # 9 of 19 < 50%
        ("SSSSSSSSSSFFFFFFFFFF", True),  # 10 of 20
        ("IIIIIIIIIIIIIIIIFFFF", False),  # a client's 4xx counts for nothing: 4 calls
        ("IIIIIIIIIIFFFFFFFFFF", True),
    ],
)
def test_failure_threshold_and_minimum_calls(outcomes: str, opens: bool) -> None:
    b = breaker()
    for letter in outcomes:
        call(b, {"S": OK, "F": FAIL, "I": IGN}[letter])
    assert (b.state is BreakerState.OPEN) is opens


def test_slow_calls_open_it_at_their_own_rate_successes_or_not() -> None:
    events: list[StateChange] = []
    b = breaker(events, slow_call_s=1.0, slow_call_rate=0.8)
    for _ in range(3):
        call(b, OK, duration=0.2)
    for _ in range(11):
        call(b, OK, duration=1.0)  # at the threshold is slow
    assert b.state is BreakerState.CLOSED  # 11 of 14 < 80%
    call(b, OK, duration=5.0)
    assert b.state is BreakerState.OPEN  # 12 of 15 = 80%
    assert events[-1].reason == "slow_call_rate"
    assert events[-1].figures["slow_calls"] == 12 and events[-1].figures["failures"] == 0


def test_the_count_window_forgets_the_oldest_calls() -> None:
    b = breaker(window_size=4, min_calls=4, failure_rate=0.75)
    for letter in "FFSS":  # 50%
        call(b, FAIL if letter == "F" else OK)
    call(b, OK)  # the window is F S S S
    call(b, FAIL)  # S S S F: 25%
    call(b, FAIL)  # S S F F: 50%
    assert b.state is BreakerState.CLOSED
    snap = b.snapshot(0.0)
    assert (snap.calls, snap.failures, snap.failure_rate) == (4, 2, 0.5)
    call(b, FAIL)  # S F F F: 75%
    assert b.state is BreakerState.OPEN


def test_the_time_window_forgets_calls_older_than_its_seconds() -> None:
    b = breaker(window="time", window_size=10, min_calls=4)
    for t in (0.0, 1.2, 2.5):
        call(b, FAIL, now=t)
    assert b.snapshot(9.9).calls == 3
    assert b.snapshot(10.0).calls == 2  # second 0 fell out
    assert b.snapshot(11.5).calls == 1
    assert b.snapshot(12.0).calls == 0
    call(b, FAIL, now=12.0)  # one failure: the old three are gone
    assert b.state is BreakerState.CLOSED
    for t in (12.1, 15.0, 21.9):
        call(b, FAIL, now=t)
    assert b.state is BreakerState.OPEN  # four within ten seconds


def test_a_success_opens_a_time_window_whose_old_successes_fell_out() -> None:
    b = breaker(window="time", window_size=2, min_calls=5)
    for _ in range(10):
        call(b, OK, now=0.0)
    for _ in range(5):
        call(b, FAIL, now=1.0)  # 5 of 15
    assert b.state is BreakerState.CLOSED
    call(b, OK, now=2.0)  # second 0 fell out: 5 failures of 6 calls
    assert b.state is BreakerState.OPEN


def test_the_time_window_skips_a_long_silence_whole() -> None:
    b = breaker(window="time", window_size=5, min_calls=2)
    call(b, FAIL, now=1.0)
    call(b, OK, now=1000.0)
    call(b, FAIL, now=1000.5)
    snap = b.snapshot(1000.5)
    assert (snap.calls, snap.failures, b.state) == (2, 1, BreakerState.OPEN)


def opened(events: list[StateChange] | None = None, **changes: Any) -> CircuitBreaker:
    """A breaker that opened at t=0 (open_s 5 unless changed)."""
    b = breaker(events, min_calls=1, window_size=1, **changes)
    call(b, FAIL, now=0.0)
    assert b.state is BreakerState.OPEN
    return b


def test_an_open_breaker_refuses_until_its_wait_is_over_then_lets_probes_through() -> None:
    events: list[StateChange] = []
    b = opened(events)
    assert b.try_acquire(4.99) is None
    assert b.retry_after(4.0) == pytest.approx(1.0)
    assert b.snapshot(4.0).until == 5.0 and b.snapshot(4.0).rejected == 1
    assert b.snapshot(5.0).state is BreakerState.HALF_OPEN  # as the next call finds it
    permits = [b.try_acquire(5.0) for _ in range(4)]
    assert [p is not None for p in permits] == [True, True, True, False]  # 3 probes
    assert b.state is BreakerState.HALF_OPEN
    half = events[-1]
    assert (half.old, half.new, half.reason, half.at) == ("open", "half_open", "wait_elapsed", 5.0)
    assert half.figures["rejected"] == 1
    assert b.snapshot(5.0).probes_in_flight == 3


def test_probes_that_pass_close_it_with_a_fresh_window() -> None:
    events: list[StateChange] = []
    b = opened(events)
    permits = [b.try_acquire(5.0) for _ in range(3)]
    for permit in permits[:2]:
        assert permit is not None
        b.record(permit, OK, FAST, 5.1)
    assert b.state is BreakerState.HALF_OPEN
    assert permits[2] is not None
    b.record(permits[2], OK, FAST, 5.2)
    assert b.state is BreakerState.CLOSED
    closed = events[-1]
    assert (closed.reason, closed.figures["probes"], closed.figures["failures"]) == (
        "probes_passed", 3, 0,
    )  # fmt: skip
    assert b.snapshot(5.2).calls == 0  # the failures that opened it are forgotten


def test_one_failed_probe_of_three_still_closes_at_a_half_threshold() -> None:
    b = opened()
    permits = [b.try_acquire(5.0) for _ in range(3)]
    for permit, outcome in zip(permits, (FAIL, OK, OK), strict=True):
        assert permit is not None
        b.record(permit, outcome, FAST, 5.0)
    assert b.state is BreakerState.CLOSED  # 1 of 3 < 50%


def test_failed_probes_reopen_it_as_soon_as_the_rest_cannot_save_it() -> None:
    events: list[StateChange] = []
    b = opened(events)
    permits = [b.try_acquire(5.0) for _ in range(3)]
    assert permits[0] is not None and permits[1] is not None and permits[2] is not None
    b.record(permits[0], FAIL, FAST, 5.5)
    assert b.state is BreakerState.HALF_OPEN
    b.record(permits[1], FAIL, FAST, 6.0)  # 2 of 3 failed: 67% whatever the third does
    assert b.state is BreakerState.OPEN
    reopened = events[-1]
    assert (reopened.old, reopened.reason, reopened.until) == (
        "half_open", "probe_failure_rate", 11.0,
    )  # fmt: skip
    b.record(permits[2], OK, FAST, 6.1)  # the third, late: it decides nothing now
    assert b.state is BreakerState.OPEN and b.try_acquire(10.9) is None
    assert b.try_acquire(11.0) is not None  # half-open again after another wait


def test_slow_probes_reopen_it() -> None:
    b = opened(slow_call_s=1.0, slow_call_rate=0.5)
    permits = [b.try_acquire(5.0) for _ in range(3)]
    for permit in permits[:2]:
        assert permit is not None
        b.record(permit, OK, 2.0, 7.0)
    assert b.state is BreakerState.OPEN


def test_a_probe_handed_back_frees_its_place_for_another() -> None:
    b = opened(probes=1)
    first = b.try_acquire(5.0)
    assert first is not None and b.try_acquire(5.0) is None
    b.release(first)  # not made (the bulkhead was full)
    second = b.try_acquire(5.0)
    assert second is not None
    b.record(second, IGN, FAST, 5.0)  # a client's 4xx: says nothing either
    third = b.try_acquire(5.0)
    assert third is not None
    b.record(third, OK, FAST, 5.0)
    assert b.state is BreakerState.CLOSED


def test_a_call_granted_before_a_change_decides_nothing_after_it() -> None:
    b = breaker(min_calls=2, window_size=2)
    early = b.try_acquire(0.0)
    assert early is not None
    call(b, FAIL)
    call(b, FAIL)
    assert b.state is BreakerState.OPEN
    b.record(early, OK, FAST, 1.0)  # started while closed, ends while open
    b.release(early)
    assert b.state is BreakerState.OPEN and b.snapshot(1.0).calls == 2
    probe = b.try_acquire(5.0)
    assert probe is not None
    b.record(early, FAIL, FAST, 5.0)  # nor while half-open
    assert b.state is BreakerState.HALF_OPEN


def test_retry_after_while_half_open_is_a_probe_s_time() -> None:
    b = opened(probes=1)
    assert b.try_acquire(5.0) is not None
    assert b.try_acquire(5.0) is None
    assert b.retry_after(5.0) == 1.0


def test_breakers_take_their_route_s_settings_and_snapshot_by_key() -> None:
    settings = ResilienceSettings.model_validate(
        {"routes": {"fraud": {"breaker": {"min_calls": 1, "window_size": 1}}}}
    )
    now = [0.0]
    events: list[StateChange] = []
    breakers = Breakers(settings, clock=lambda: now[0], listener=events.append)
    fraud, other = BreakerKey("infer", "fraud", "5"), BreakerKey("infer", "other", "")
    assert breakers.get(fraud) is breakers.get(fraud)
    call(breakers.get(fraud), FAIL)
    call(breakers.get(other), FAIL)
    assert breakers.get(fraud).state is BreakerState.OPEN  # its route opens on one failure
    assert breakers.get(other).state is BreakerState.CLOSED
    now[0] = 1.0
    rows = breakers.snapshot()
    assert [(r.model, r.version, r.state, r.calls, r.until) for r in rows] == [
        ("fraud", "5", BreakerState.OPEN, 1, 5.0),
        ("other", "", BreakerState.CLOSED, 1, None),
    ]
    assert len(events) == 1 and events[0].log_fields()["key"] == "infer/fraud/5"
    breakers.discard(fraud)
    assert len(breakers) == 1 and breakers.get(fraud).state is BreakerState.CLOSED


# Property tests.

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0)),
        st.tuples(st.sampled_from(["success", "failure", "slow", "ignored", "release"]),
                  st.integers(0, 10)),
        st.tuples(st.just("wait"), st.integers(1, 8)),
    ),
    max_size=120,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(operations=OPERATIONS, probes=st.integers(1, 4), min_calls=st.integers(1, 6))
def test_half_open_never_lets_more_than_its_probes_through(
    operations: list[tuple[str, int]], probes: int, min_calls: int
) -> None:
    events: list[StateChange] = []
    b = breaker(
        events, window_size=6, min_calls=min_calls, probes=probes, open_s=5, slow_call_s=1.0
    )
    now = 0.0
    # Permits granted and not handed back, each with the number of changes before it: a
    # permit belongs to the current state while no change came after it.
    held: list[tuple[int, int]] = []
    out = decided = 0  # probes of the current half-open state: not handed back, recorded
    for operation, arg in operations:
        if operation == "wait":
            now += arg
        elif operation == "acquire":
            seen = len(events)
            permit = b.try_acquire(now)
            if len(events) > seen:
                assert events[-1].new == "half_open"
                out = decided = 0
            if permit is not None:
                held.append((permit, len(events)))
                out += b.state is BreakerState.HALF_OPEN
        elif held:
            permit, stamp = held.pop(arg % len(held))
            probe = b.state is BreakerState.HALF_OPEN and stamp == len(events)
            if operation == "release":
                b.release(permit)
                out -= probe
            else:
                outcome = {"success": OK, "slow": OK, "failure": FAIL, "ignored": IGN}[operation]
                b.record(permit, outcome, 2.0 if operation == "slow" else FAST, now)
                if probe and outcome is IGN:
                    out -= 1
                elif probe:
                    decided += 1
        if b.state is BreakerState.HALF_OPEN:
            in_flight = out - decided
            assert 0 <= in_flight <= probes  # never more probes at once
            assert out <= probes and decided <= probes  # nor in all (those handed back aside)
            assert b.snapshot(now).probes_in_flight == in_flight


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.sampled_from([OK, IGN]), st.floats(0, 0.999), st.floats(0, 30)),
        max_size=200,
    ),
    window=st.sampled_from(["count", "time"]),
)
def test_a_breaker_that_sees_no_failure_never_opens(
    calls: list[tuple[Outcome, float, float]], window: str
) -> None:
    events: list[StateChange] = []
    b = breaker(events, window=window, window_size=5, min_calls=1, slow_call_s=1.0)
    now = 0.0
    for outcome, duration, wait in calls:
        now += wait
        assert call(b, outcome, now, duration)
    assert b.state is BreakerState.CLOSED and events == []


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from([OK, FAIL, IGN]), max_size=80),
    size=st.integers(1, 12),
    min_calls=st.integers(1, 12),
    rate=st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.7, 1.0]),
)
def test_a_count_window_opens_exactly_when_a_plain_list_of_its_calls_says(
    outcomes: list[Outcome], size: int, min_calls: int, rate: float
) -> None:
    """The ring buffer's running totals against the last ``size`` calls kept in a deque."""
    min_calls = min(min_calls, size)
    b = breaker(window_size=size, min_calls=min_calls, failure_rate=rate, slow_call_rate=1.0)
    last: deque[Outcome] = deque(maxlen=size)
    for outcome in outcomes:
        assert call(b, outcome)
        if outcome is not IGN:
            last.append(outcome)
        failed = sum(o is FAIL for o in last)
        should = len(last) >= min_calls and failed >= rate * len(last) - 1e-9
        assert (b.state is BreakerState.OPEN) is should
        if should:
            return


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([OK, FAIL, IGN]), st.sampled_from([0.01, 3.0]),
                  st.integers(0, 4)),
        max_size=150,
    ),
)  # fmt: skip
def test_every_decision_can_be_replayed_from_the_events(
    steps: list[tuple[Outcome, float, int]],
) -> None:
    """Each change follows the previous one and is justified by the figures it carries."""
    events: list[StateChange] = []
    b = breaker(events, window_size=8, min_calls=4, probes=2, slow_call_s=1.0)
    now = 0.0
    for outcome, duration, wait in steps:
        now += wait
        call(b, outcome, now, duration)
    state, until = "closed", None
    for event in events:
        assert event.component == "breaker" and event.old == state
        f = event.figures
        if event.new == "open":
            assert event.until == event.at + f["open_s"]
            if event.old == "closed":
                assert f["calls"] >= f["min_calls"]
                rate = "failure_rate" if event.reason == "failure_rate" else "slow_call_rate"
                threshold = "failure_threshold" if rate == "failure_rate" else "slow_call_threshold"
                assert f[rate] >= f[threshold] - 1e-9
            else:
                counted = f["failures"] if event.reason == "probe_failure_rate" else f["slow_calls"]
                threshold = (
                    f["failure_threshold"]
                    if event.reason == "probe_failure_rate"
                    else f["slow_call_threshold"]
                )
                assert counted >= threshold * f["probes"] - 1e-9
        elif event.new == "half_open":
            assert until is not None and event.at >= until and event.reason == "wait_elapsed"
        else:
            assert event.reason == "probes_passed" and f["calls"] == f["probes"]
            assert f["failures"] < f["failure_threshold"] * f["probes"] - 1e-9
            assert f["slow_calls"] < f["slow_call_threshold"] * f["probes"] - 1e-9
        state, until = event.new, event.until
    assert b.state.value == state  # the log alone tells where the breaker is


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([OK, FAIL, IGN]),
            st.sampled_from([0.0, 0.3, 1.0, 2.5, 7.0]),
            st.integers(1, 8),  # calls of the step
        ),
        max_size=40,
    ),
    size=st.integers(1, 6),
    min_calls=st.integers(1, 8),
    rate=st.sampled_from([0.25, 0.5, 0.7, 1.0]),
)
# Old successes falling out raise the rate: a success may open a time window.
@example(steps=[(OK, 0.0, 3), (FAIL, 1.0, 1), (OK, 1.0, 1)], size=2, min_calls=1, rate=0.5)
def test_a_time_window_opens_exactly_when_a_plain_list_of_its_calls_says(
    steps: list[tuple[Outcome, float, int]], size: int, min_calls: int, rate: float
) -> None:
    """The ring of one-second buckets against every call kept with its time."""
    b = breaker(
        window="time", window_size=size, min_calls=min_calls, failure_rate=rate,
        slow_call_rate=1.0,
    )  # fmt: skip
    now = 0.0
    seen: list[tuple[float, Outcome]] = []
    for outcome, wait, times in [(o, w, n) for o, w, count in steps for n in range(count)]:
        now += wait if times == 0 else 0.0
        assert call(b, outcome, now)
        if outcome is IGN:  # counts for nothing, decides nothing
            assert b.state is BreakerState.CLOSED
            continue
        seen.append((now, outcome))
        inside = [o for t, o in seen if int(t) > int(now) - size]
        failed = sum(o is FAIL for o in inside)
        should = len(inside) >= min_calls and failed >= rate * len(inside) - 1e-9
        assert (b.state is BreakerState.OPEN) is should
        if should:
            return

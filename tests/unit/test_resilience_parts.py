"""The small parts of the resilience layer, by tables: outcomes, deadlines and their header,
backoff and the retry budget, bulkheads, fallbacks, the event's log line."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimesh import errors
from aimesh.config import Fallback
from aimesh.errors import InvalidRequest, Overloaded
from aimesh.resilience import (
    DEADLINE_HEADER,
    FALLBACK_HEADER,
    Bulkheads,
    CountWindow,
    Deadline,
    Outcome,
    RetryBudget,
    StateChange,
    TimeWindow,
    backoff_s,
    classify_exception,
    classify_status,
    fallback_header_value,
    should_fall_back,
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.SUCCESS), (204, Outcome.SUCCESS), (304, Outcome.SUCCESS),
     (400, Outcome.IGNORED), (404, Outcome.IGNORED), (429, Outcome.IGNORED),
     (500, Outcome.FAILURE), (502, Outcome.FAILURE), (503, Outcome.FAILURE),
     (504, Outcome.FAILURE)],
)  # fmt: skip
def test_a_status_counts_as_the_upstream_s_fault_only_when_5xx(
    status: int, outcome: Outcome
) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (TimeoutError(), Outcome.FAILURE),
        (ConnectionRefusedError(), Outcome.FAILURE),
        (ConnectionResetError(), Outcome.FAILURE),
        (OSError("unreachable"), Outcome.FAILURE),
        (ValueError("a broken answer"), Outcome.FAILURE),
        (errors.UpstreamError("reset"), Outcome.FAILURE),
        (errors.UpstreamTimeout("slow"), Outcome.FAILURE),
        (errors.ShuttingDown("draining"), Outcome.FAILURE),
        (errors.Overloaded("full"), Outcome.FAILURE),
        (errors.InvalidRequest("bad"), Outcome.IGNORED),
        (errors.ShapeMismatch("bad"), Outcome.IGNORED),
        (errors.ModelNotFound("none"), Outcome.IGNORED),
        (errors.Unauthorized("who"), Outcome.IGNORED),
        (asyncio.CancelledError(), Outcome.IGNORED),
        (errors.DeadlineExceeded("the caller's own limit"), Outcome.IGNORED),
    ],
    ids=lambda v: type(v).__name__,
)
def test_an_exception_counts_as_a_failure_unless_the_caller_caused_it(
    exc: BaseException, outcome: Outcome
) -> None:
    assert classify_exception(exc) is outcome


def test_a_deadline_counts_down_and_cuts_call_timeouts() -> None:
    deadline = Deadline.after(2.0, now=10.0)
    assert deadline.at == 12.0
    assert deadline.remaining(11.5) == 0.5 and deadline.remaining(13.0) == 0.0
    assert not deadline.expired(11.999) and deadline.expired(12.0)
    assert deadline.timeout(30.0, 11.0) == 1.0  # min(call timeout, time left)
    assert deadline.timeout(0.25, 11.0) == 0.25
    assert deadline.timeout(5.0, 20.0) == 0.0
    assert deadline.grpc_timeout(10.5) == 1.5
    assert deadline.earliest(None) is deadline
    assert deadline.earliest(Deadline(11.0)) == Deadline(11.0)
    assert Deadline(11.0).earliest(deadline) == Deadline(11.0)


def test_a_deadline_travels_as_whole_milliseconds_left() -> None:
    assert DEADLINE_HEADER == "x-aimesh-deadline-ms"
    deadline = Deadline.after(1.2345, now=100.0)
    assert deadline.header_value(100.0) == "1234"  # rounded down: never more time than left
    assert deadline.header_value(200.0) == "0"
    received = Deadline.from_header("1234", now=5000.0)  # another process, another clock
    assert received.at == pytest.approx(5001.234)
    assert Deadline.from_header(b" 250 ", now=0.0).at == 0.25
    assert Deadline.from_header("0", now=7.0).expired(7.0)


@pytest.mark.parametrize("value", ["", "-5", "1.5", "soon", "1e3", "99999999999", "١٢"])
def test_a_deadline_header_that_is_not_whole_milliseconds_is_a_bad_request(value: str) -> None:
    with pytest.raises(InvalidRequest, match=DEADLINE_HEADER):
        Deadline.from_header(value, now=0.0)


@given(left_ms=st.integers(0, 10**9), now=st.floats(0, 1e6))
def test_a_deadline_survives_the_header_without_gaining_time(left_ms: int, now: float) -> None:
    sent = Deadline.after(left_ms / 1000.0, now)
    received = Deadline.from_header(sent.header_value(now), now)
    assert received.at <= sent.at + 1e-6
    assert sent.at - received.at < 0.001 + 1e-6


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    assert [backoff_s(n, 0.1, 1.0, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.1, 0.2, 0.4, 0.8, 1.0,
    ]  # fmt: skip
    assert backoff_s(3, 0.1, 1.0, lambda: 0.25) == 0.1
    assert backoff_s(1, 0.1, 1.0, lambda: 0.0) == 0.0
    assert backoff_s(500, 0.1, 1.0, lambda: 1.0) == 1.0  # no overflow however many


def test_the_retry_budget_is_a_share_of_requests_in_flight_with_a_floor() -> None:
    budget = RetryBudget(ratio=0.2, minimum=3)
    for _ in range(20):
        budget.start()
    granted = sum(budget.try_retry() for _ in range(10))
    assert granted == 4  # 20% of 20 (above the floor of 3)
    budget.retry_done()
    assert budget.try_retry() and not budget.try_retry()
    quiet = RetryBudget(ratio=0.2, minimum=3)
    quiet.start()
    assert sum(quiet.try_retry() for _ in range(10)) == 3  # the floor, for a quiet route
    none = RetryBudget(ratio=0.0, minimum=0)
    none.start()
    assert not none.try_retry()


def test_a_bulkhead_counts_per_instance_and_refuses_when_full() -> None:
    bulkheads = Bulkheads()
    assert bulkheads.try_enter("a", 2) and bulkheads.try_enter("a", 2)
    assert not bulkheads.try_enter("a", 2)
    assert bulkheads.try_enter("b", 2)
    with pytest.raises(Overloaded) as full:
        bulkheads.enter("a", 2)
    assert full.value.retry_after_s == 1.0
    assert bulkheads.snapshot() == {"a": 2, "b": 1}
    bulkheads.leave("a")
    bulkheads.leave("b")
    assert bulkheads.in_flight("a") == 1 and bulkheads.snapshot() == {"a": 1}
    bulkheads.enter("a", 2)


@pytest.mark.parametrize(
    ("fallback", "header"),
    [
        (Fallback(version="4"), "version:4"),
        (Fallback(model="fraud-lite"), "model:fraud-lite"),
        (Fallback(model="fraud-lite", version="2"), "model:fraud-lite@2"),
        (
            Fallback.model_validate(
                {"outputs": [{"name": "p", "datatype": "FP32", "shape": [1], "data": [0.0]}]}
            ),
            "static",
        ),
    ],
)
def test_a_fallback_s_answer_names_it_in_a_header(fallback: Fallback, header: str) -> None:
    assert FALLBACK_HEADER == "x-aimesh-fallback"
    assert fallback_header_value(fallback) == header


@pytest.mark.parametrize(
    ("error", "falls_back"),
    [
        (errors.CircuitOpen("fraud", "5", 3.0), True),
        (errors.Overloaded("full"), True),
        (errors.UpstreamError("reset"), True),
        (errors.UpstreamTimeout("slow"), True),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (errors.DeadlineExceeded("the caller gave up"), False),
        (errors.RateLimited("key", 1.0), False),
        (errors.InvalidRequest("bad"), False),
        (errors.ModelNotFound("none"), False),
    ],
    ids=lambda v: type(v).__name__,
)
def test_only_the_upstream_s_faults_go_to_the_fallback(
    error: BaseException, falls_back: bool
) -> None:
    assert should_fall_back(error) is falls_back


def test_a_state_change_is_one_log_line_with_its_figures() -> None:
    change = StateChange(
        "breaker", ("infer", "fraud", "5"), "closed", "open", "failure_rate", 12.5, 17.5,
        {"calls": 10, "failure_rate": 0.6},
    )  # fmt: skip
    assert change.log_fields() == {
        "component": "breaker", "key": "infer/fraud/5", "from": "closed", "to": "open",
        "reason": "failure_rate", "at": 12.5, "until": 17.5, "calls": 10, "failure_rate": 0.6,
    }  # fmt: skip


@pytest.mark.parametrize("window", [CountWindow, TimeWindow])
def test_a_window_holds_at_least_one(window: type[CountWindow] | type[TimeWindow]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        window(0)

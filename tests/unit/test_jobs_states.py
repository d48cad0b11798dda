"""The job state machine: tables for each change, and a property test over any sequence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimesh.errors import JobFinished
from aimesh.jobs import TERMINAL, TRANSITIONS, Job, JobError, states
from aimesh.jobs.states import Attempt, InvalidTransition, StaleAttempt

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOOM = JobError("handler_error", "boom")


def queued(max_attempts: int = 3, **changes: object) -> Job:
    job = Job(id="a" * 32, kind="noop", state="queued", max_attempts=max_attempts, created=T0)
    return msgspec.structs.replace(job, **changes)


def test_a_started_job_counts_its_attempt_and_names_its_worker() -> None:
    job, attempt = states.start(queued(), worker="w1", seq=7, now=T0)
    assert (job.state, job.attempts, job.worker, job.seq, job.started) == (
        "running",
        1,
        "w1",
        7,
        T0,
    )
    assert attempt == Attempt(job.id, 1, "w1", claim=1)


def test_success_is_recorded_once_and_only_by_the_current_attempt() -> None:
    job, first = states.start(queued(), worker="w1", seq=7, now=T0)
    job, second = states.start(job, worker="w2", seq=7, now=T0)  # w1 was lost
    with pytest.raises(StaleAttempt):
        states.succeed(job, first, result=1, result_ref=None, now=T0)
    done = states.succeed(job, second, result={"x": 1}, result_ref=None, now=T0)
    assert (done.state, done.result, done.finished, done.progress) == (
        "succeeded",
        {"x": 1},
        T0,
        1.0,
    )
    with pytest.raises(StaleAttempt):
        states.succeed(done, second, result=2, result_ref=None, now=T0)


def test_retry_goes_back_to_the_queue_with_the_error_until_attempts_are_spent() -> None:
    job, attempt = states.start(queued(max_attempts=2), worker="w", seq=1, now=T0)
    job = states.retry(job, attempt, BOOM, T0)
    assert (job.state, job.attempts, job.error) == ("queued", 1, BOOM)
    job, attempt = states.start(job, worker="w", seq=1, now=T0)
    with pytest.raises(InvalidTransition):
        states.retry(job, attempt, BOOM, T0)
    assert states.fail(job, BOOM, T0, attempt).state == "failed"


def test_a_released_attempt_does_not_count_but_stays_fenced_out() -> None:
    job, released = states.start(queued(), worker="w", seq=1, now=T0)
    job = states.release(job, released, T0)
    assert (job.state, job.attempts) == ("queued", 0)
    job, again = states.start(job, worker="w", seq=1, now=T0)  # same worker, same number
    assert again.number == released.number and again != released
    with pytest.raises(StaleAttempt):
        states.succeed(job, released, result=None, result_ref=None, now=T0)


@pytest.mark.parametrize(
    ("job", "expected_state", "requested"),
    [
        (queued(), "cancelled", True),
        (queued(state="running", attempts=1, claims=1, worker="w"), "running", True),
        (queued(state="cancelled", finished=T0), "cancelled", False),
    ],
)
def test_cancel_request(job: Job, expected_state: str, requested: bool) -> None:
    after = states.request_cancel(job, T0 + timedelta(seconds=1))
    assert after.state == expected_state
    assert after.cancel_requested is requested
    assert (after is job) is (not requested)


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_a_finished_job_cannot_be_cancelled(state: str) -> None:
    with pytest.raises(JobFinished):
        states.request_cancel(queued(state=state, finished=T0), T0)


@pytest.mark.parametrize(
    ("job", "seq", "expected"),
    [
        (queued(), 5, "start"),
        (queued(state="running", attempts=1, worker="w", seq=5), 5, "start"),
        (queued(state="running", attempts=1, worker="w", seq=5), 9, "duplicate"),
        (queued(state="cancelled", finished=T0), 5, "skip"),
        (queued(state="succeeded", finished=T0), 5, "skip"),
        (queued(state="running", attempts=1, seq=5, cancel_requested=True), 5, "cancel"),
        (queued(max_attempts=2, state="running", attempts=2, seq=5), 5, "exhausted"),
    ],
)
def test_what_a_worker_does_with_a_delivery(job: Job, seq: int, expected: str) -> None:
    assert states.on_delivery(job, seq) == expected


OPERATIONS = st.sampled_from(
    [
        "start-a", "start-b", "succeed", "succeed-stale", "fail", "fail-lost", "retry",
        "release", "request-cancel", "cancel", "progress", "lose-worker", "lost-unclaimed",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(max_attempts=st.integers(1, 4), operations=st.lists(OPERATIONS, max_size=30))
def test_any_sequence_of_changes_keeps_the_record_consistent(
    max_attempts: int, operations: list[str]
) -> None:
    job = queued(max_attempts=max_attempts)
    current: Attempt | None = None
    stale: Attempt | None = None
    successes = 0
    for step, operation in enumerate(operations):
        now = T0 + timedelta(seconds=step)
        before = job
        try:
            if operation.startswith("start"):
                worker = operation[-1]
                job, attempt = states.start(job, worker=worker, seq=1, now=now)
                stale, current = current, attempt
            elif operation == "succeed" and current is not None:
                job = states.succeed(job, current, result=step, result_ref=None, now=now)
                successes += 1
            elif operation == "succeed-stale" and stale is not None:
                job = states.succeed(job, stale, result=step, result_ref=None, now=now)
                raise AssertionError("a stale attempt recorded a success")
            elif operation == "fail" and current is not None:
                job = states.fail(job, BOOM, now, current)
            elif operation == "fail-lost":
                job = states.fail(job, BOOM, now)
            elif operation == "retry" and current is not None:
                job = states.retry(job, current, BOOM, now)
            elif operation == "release" and current is not None:
                job = states.release(job, current, now)
            elif operation == "request-cancel":
                job = states.request_cancel(job, now)
            elif operation == "cancel":
                job = states.cancel(job, now, current if job.state == "running" else None)
            elif operation == "progress" and current is not None:
                job = states.record_progress(job, current, step / 30, "half", now)
            elif operation == "lose-worker" and current is not None:
                job = states.lose_worker(job, current.worker, now)
            elif operation == "lost-unclaimed" and job.attempts < job.max_attempts:
                job = states.lost_unclaimed(job, now)
        except (InvalidTransition, StaleAttempt, JobFinished):
            assert job is before  # a refused change changes nothing
        if before.state in TERMINAL:
            assert job == before, "a finished job changed"
        assert job.state == before.state or job.state in TRANSITIONS[before.state]
        assert 0 <= job.attempts <= job.max_attempts
        assert (job.finished is not None) == (job.state in TERMINAL)
        assert 0.0 <= job.progress <= 1.0
        if job.state == "running":
            assert job.worker is not None and job.attempts >= 1
        if job.state == "succeeded":
            assert job.error is None
        # Every attempt is in the log: one open entry while running (the last, its worker's),
        # and as many counted (not handed-back) entries as attempts.
        open_entries = [i for i, a in enumerate(job.attempt_log) if a.outcome is None]
        assert open_entries == ([len(job.attempt_log) - 1] if job.state == "running" else [])
        if job.state == "running":
            assert job.attempt_log[-1].worker == job.worker
        counted = [a for a in job.attempt_log if a.outcome != "released"]
        assert len(counted) == job.attempts
    assert successes <= 1


def test_a_killed_attempt_stays_in_the_log_as_worker_lost() -> None:
    job, _first = states.start(queued(), worker="w1", seq=7, now=T0, delivery="$JS.ACK.x")
    assert (job.delivery, job.attempt_log[0].outcome) == ("$JS.ACK.x", None)
    lost = states.lose_worker(job, "w1", T0)  # its discovery entry is gone
    assert states.lose_worker(job, "w2", T0) is job  # not w2's attempt: nothing changes
    assert (lost.state, lost.attempts, lost.error) == ("queued", 1, states.WORKER_LOST)
    job, second = states.start(lost, worker="w2", seq=7, now=T0)
    job = states.succeed(job, second, result=1, result_ref=None, now=T0)
    outcomes = [(a.number, a.worker, a.outcome) for a in job.attempt_log]
    assert outcomes == [(1, "w1", "worker_lost"), (2, "w2", "succeeded")]
    # Redelivered after ack_wait instead: the start closes the open attempt the same way.
    job, _first = states.start(queued(), worker="w1", seq=7, now=T0)
    job, _second = states.start(job, worker="w2", seq=7, now=T0)
    assert [a.outcome for a in job.attempt_log] == ["worker_lost", None]


def test_a_delivery_lost_before_its_claim_counts_as_an_attempt() -> None:
    job = states.lost_unclaimed(queued(max_attempts=1), T0)
    assert (job.state, job.attempts, job.attempt_log[0].worker) == ("queued", 1, None)
    assert states.on_delivery(job, 7) == "exhausted"

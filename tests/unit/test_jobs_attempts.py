"""How an attempt ends: from a finished run to the record's change, the ack and the counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest

from aimesh.config import JobsSettings
from aimesh.errors import InvalidRequest, JobRejected
from aimesh.jobs import Job, JobContext, states
from aimesh.jobs.attempts import Outcome, Run, outcome_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = JobsSettings(backoff_s=1.0, backoff_max_s=3.0, max_result_bytes=1024)


async def _ended(
    body: Callable[[], Coroutine[Any, Any, object]] | None,
    *,
    attempts_before: int = 0,
    max_attempts: int = 3,
    released: bool = False,
    cancel_requested: bool = False,
) -> tuple[Job, Outcome]:
    """Run ``body`` as attempt ``attempts_before + 1`` of a job; the job and the outcome."""
    queued = Job(
        id="a" * 32, kind="k", state="queued", max_attempts=max_attempts, attempts=attempts_before
    )
    job, attempt = states.start(queued, worker="w", seq=1, now=T0)
    ctx = JobContext(job, attempt.number)
    run = Run(msg=None, attempt=attempt, ctx=ctx, job=job, revision=1)  # type: ignore[arg-type]
    if body is not None:
        run.task = asyncio.ensure_future(body())
        if cancel_requested or released:
            ctx._cancel()
            run.released = released
            run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
    return job, outcome_of(run, SETTINGS)


def _end(
    body: Callable[[], Coroutine[Any, Any, object]] | None, **options: Any
) -> tuple[Job, Outcome]:
    """The record after the outcome of running ``body``, and the outcome."""
    job, outcome = asyncio.run(_ended(body, **options))
    return outcome.change(job), outcome


def _returns(value: object) -> Callable[[], Coroutine[Any, Any, object]]:
    async def body() -> object:
        return value

    return body


def _raises(exc: BaseException) -> Callable[[], Coroutine[Any, Any, object]]:
    async def body() -> object:
        raise exc

    return body


def _sleeps() -> Callable[[], Coroutine[Any, Any, object]]:
    async def body() -> object:
        await asyncio.sleep(3600)
        return None

    return body


def test_a_result_is_recorded_and_acknowledged() -> None:
    job, outcome = _end(_returns({"version": 3}))
    assert (job.state, job.result, outcome.ack, outcome.counter) == (
        "succeeded",
        {"version": 3},
        True,
        "succeeded",
    )
    assert outcome.dead_letter is None


@pytest.mark.parametrize(
    ("result", "code"), [(object(), "result_invalid"), ("x" * 2000, "result_too_large")]
)
def test_a_result_that_cannot_be_kept_fails_the_job_at_once(result: object, code: str) -> None:
    job, outcome = _end(_returns(result))
    assert (job.state, job.error.code if job.error else None) == ("failed", code)
    assert outcome.ack and outcome.dead_letter is not None


@pytest.mark.parametrize(("attempts_before", "delay"), [(0, 1.0), (1, 2.0)])
def test_an_error_retries_with_a_doubling_delay(attempts_before: int, delay: float) -> None:
    job, outcome = _end(
        _raises(RuntimeError("flaky")), attempts_before=attempts_before, max_attempts=5
    )
    assert (job.state, outcome.ack, outcome.nak_delay, outcome.counter) == (
        "queued",
        False,
        delay,
        "retried",
    )
    assert job.error is not None and job.error.code == "handler_error"


def test_the_delay_stops_growing_at_its_maximum() -> None:
    _job, outcome = _end(_raises(RuntimeError("flaky")), attempts_before=3, max_attempts=9)
    assert outcome.nak_delay == SETTINGS.backoff_max_s


@pytest.mark.parametrize(
    ("exc", "attempts_before", "code"),
    [
        (JobRejected("bad payload"), 0, "job_rejected"),  # never retried
        (InvalidRequest("bad"), 0, "invalid_request"),
        (RuntimeError("flaky"), 2, "handler_error"),  # the last of 3 attempts
    ],
)
def test_a_permanent_error_or_the_last_attempt_fails_with_a_dead_letter(
    exc: BaseException, attempts_before: int, code: str
) -> None:
    job, outcome = _end(_raises(exc), attempts_before=attempts_before)
    assert (job.state, outcome.ack, outcome.counter) == ("failed", True, "failed")
    assert outcome.dead_letter is not None and outcome.dead_letter.code == code


def test_a_cancel_request_ends_the_job_cancelled() -> None:
    job, outcome = _end(_sleeps(), cancel_requested=True)
    assert (job.state, outcome.ack, outcome.counter) == ("cancelled", True, "cancelled")


@pytest.mark.parametrize("body", [_sleeps(), None])
def test_a_handed_back_attempt_is_queued_again_and_not_counted(
    body: Callable[[], Coroutine[Any, Any, object]] | None,
) -> None:
    job, outcome = _end(body, released=True)
    assert (job.state, job.attempts, outcome.ack, outcome.nak_delay) == ("queued", 0, False, 0.0)
    assert outcome.counter == "released"


def test_a_handler_error_is_recorded_without_the_servers_paths() -> None:
    failure = FileNotFoundError("[Errno 2] No such file: '/srv/aimesh/home/cache/x.bin'")
    job, _outcome = _end(_raises(failure), attempts_before=2)
    assert job.error is not None
    assert job.error.message == "FileNotFoundError: [Errno 2] No such file: '<hidden>'"

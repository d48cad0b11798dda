"""A job's events are its record's revisions: what each step of the state machine is called."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aimesh.jobs import Job, JobError, states
from aimesh.jobs.events import change_between, job_event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=1)
ERROR = JobError("handler_error", "boom")


def _queued() -> Job:
    return Job(id="a" * 32, kind="k", state="queued", max_attempts=3)


def _running() -> tuple[Job, states.Attempt]:
    return states.start(_queued(), worker="w", seq=1, now=T0)


def _steps() -> list[tuple[str, Job | None, Job]]:
    queued = _queued()
    running, attempt = _running()
    return [
        ("first sight of a queued job", None, queued),
        ("first sight of a running job", None, running),
        ("claimed", queued, running),
        ("progress", running, states.record_progress(running, attempt, 0.5, "half", LATER)),
        ("cancel asked", running, states.request_cancel(running, LATER)),
        ("retried", running, states.retry(running, attempt, ERROR, LATER)),
        ("handed back", running, states.release(running, attempt, LATER)),
        ("taken over", running, states.start(running, worker="v", seq=1, now=LATER)[0]),
        (
            "succeeded",
            running,
            states.succeed(running, attempt, result=1, result_ref=None, now=LATER),
        ),
        ("failed", running, states.fail(running, ERROR, LATER, attempt)),
        ("cancelled while running", running, states.cancel(running, LATER, attempt)),
        ("cancelled while queued", queued, states.request_cancel(queued, LATER)),
    ]


EXPECTED = [
    "queued",
    "running",
    "running",
    "progress",
    "cancel_requested",
    "retrying",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "cancelled",
]


@pytest.mark.parametrize(("step", "expected"), zip(_steps(), EXPECTED, strict=True))
def test_each_change_of_the_record_is_named(
    step: tuple[str, Job | None, Job], expected: str
) -> None:
    _name, before, after = step
    assert change_between(before, after) == expected


def test_an_event_is_one_revision_of_the_record() -> None:
    running, attempt = _running()
    job = states.record_progress(running, attempt, 0.25, "quarter", LATER)
    event = job_event(job, 7, change_between(running, job))
    assert (event.id, event.revision, event.change, event.state) == (
        f"{job.id}-7",
        7,
        "progress",
        "running",
    )
    assert (event.progress, event.message, event.attempt) == (0.25, "quarter", 1)

"""The job state machine: pure functions from one record to the next, and nothing else.

::

    queued ──start──▶ running ──succeed──▶ succeeded
      │  ▲              │ │ │
      │  └─retry/release┘ │ └──fail──────▶ failed ◀── (queued, attempts spent: a lost worker)
      │    /lose_worker   └────cancel────▶ cancelled
      └──────────cancel──────────────────▶ cancelled

``running ──start──▶ running`` is a redelivery after the worker of the previous attempt was
lost. A worker's writes name its :class:`Attempt` (by the record's ``claims``, which only
ever grows); once another attempt has started (or the job has ended), they raise
:class:`StaleAttempt`, so two workers never both finish one job. The store applies these
functions under optimistic concurrency (KV revisions).

Every delivery of the job to a worker is an entry of the record's ``attempt_log``, opened
by :func:`start` and closed by the change that ends the attempt (``succeeded``, ``failed``,
``cancelled``, ``released``); an attempt still open when another starts, or when the job
ends without it, is closed ``worker_lost``. A delivery that left no trace at all (its
worker started the job early and was lost before its claim) is entered by
:func:`lost_unclaimed` when the job's message comes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from aimesh.bus import JobState
from aimesh.errors import JobFinished
from aimesh.jobs.types import ATTEMPT_LOG_MAX, TERMINAL, AttemptEntry, AttemptOutcome, Job, JobError

__all__ = [
    "TRANSITIONS",
    "Attempt",
    "Delivery",
    "InvalidTransition",
    "StaleAttempt",
    "cancel",
    "fail",
    "lose_worker",
    "lost_unclaimed",
    "on_delivery",
    "record_progress",
    "release",
    "request_cancel",
    "retry",
    "start",
    "succeed",
]

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"running", "queued", "succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
"""Which states each state may move to."""


class InvalidTransition(Exception):
    """Raised when a change does not fit the job's state (e.g. starting a finished job)."""

    def __init__(self, job: Job, to: JobState) -> None:
        super().__init__(f"job {job.id} cannot go from {job.state} to {to}")
        self.job = job
        self.to = to


class StaleAttempt(Exception):
    """Raised when a worker writes for an attempt that is no longer the job's current one."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a job by one worker: the fencing token of that worker's writes."""

    job_id: str
    number: int
    """The attempt's number, from 1 (a handed-back attempt's number is used again)."""
    worker: str
    claim: int
    """The record's ``claims`` when it started: unique among the job's attempts."""


Delivery = Literal["start", "skip", "duplicate", "cancel", "exhausted"]
"""What a worker does with a delivered job message (see :func:`on_delivery`)."""


def on_delivery(job: Job, seq: int) -> Delivery:
    """Decide what a worker does with the message of ``job`` at stream sequence ``seq``.

    ``skip``: the job has ended (cancelled while queued, or a late redelivery): acknowledge.
    ``duplicate``: another copy of the job's message is the one being worked: acknowledge.
    ``cancel``: a cancel was asked for while nobody ran the job: end it cancelled.
    ``exhausted``: the last attempt started and its worker was lost: fail the job.
    ``start``: run the next attempt.
    """
    if job.state in TERMINAL:
        return "skip"
    if job.seq is not None and job.seq != seq:
        return "duplicate"
    if job.cancel_requested:
        return "cancel"
    if job.attempts >= job.max_attempts:
        return "exhausted"
    return "start"


WORKER_LOST = JobError("worker_lost", "the worker running this attempt was lost before it ended")
"""Why an attempt ended ``worker_lost``."""


def _log(job: Job, entry: AttemptEntry) -> list[AttemptEntry]:
    """The attempt log with ``entry`` added (the oldest dropped beyond the bound)."""
    return [*job.attempt_log, entry][-ATTEMPT_LOG_MAX:]


def _closed(
    job: Job, outcome: AttemptOutcome, now: datetime, error: JobError | None = None
) -> list[AttemptEntry]:
    """The attempt log with its open entry (if any) closed as ``outcome``."""
    log = job.attempt_log
    if not log or log[-1].outcome is not None:
        return log
    last = msgspec.structs.replace(log[-1], ended=now, outcome=outcome, error=error)
    return [*log[:-1], last]


def _move(job: Job, to: JobState, now: datetime, **changes: Any) -> Job:
    if to not in TRANSITIONS[job.state]:
        raise InvalidTransition(job, to)
    return msgspec.structs.replace(job, state=to, updated=now, **changes)


def _check(job: Job, attempt: Attempt) -> None:
    if job.state != "running" or job.claims != attempt.claim:
        raise StaleAttempt(
            f"attempt {attempt.number} of job {job.id} by {attempt.worker} is no longer "
            f"current (the job is {job.state}, attempt {job.attempts} by {job.worker})"
        )


def start(
    job: Job, *, worker: str, seq: int, now: datetime, delivery: str | None = None
) -> tuple[Job, Attempt]:
    """Start the next attempt of ``job`` on ``worker``, for its message at ``seq`` (delivered
    with reply subject ``delivery``)."""
    if job.attempts >= job.max_attempts:
        raise InvalidTransition(job, "running")
    number = job.attempts + 1
    # A running job started again: the worker of its open attempt was lost.
    before = _closed(job, "worker_lost", now, WORKER_LOST)
    entry = AttemptEntry(number=number, worker=worker, started=now)
    started = _move(
        job,
        "running",
        now,
        attempts=number,
        claims=job.claims + 1,
        attempt_log=[*before, entry][-ATTEMPT_LOG_MAX:],
        worker=worker,
        seq=seq,
        delivery=delivery,
        started=now,
        progress=0.0,
        progress_message=None,
    )
    return started, Attempt(job.id, number, worker, started.claims)


def lose_worker(job: Job, worker: str, now: datetime) -> Job:
    """Put ``job`` back in the queue if ``worker``, known dead, runs its current attempt.

    The attempt counts, ended ``worker_lost``; the job's message is then handed back so
    that the next attempt starts at once. Anything else is returned unchanged.
    """
    if job.state != "running" or job.worker != worker:
        return job
    log = _closed(job, "worker_lost", now, WORKER_LOST)
    return _move(job, "queued", now, error=WORKER_LOST, progress=0.0, attempt_log=log)


def lost_unclaimed(job: Job, now: datetime) -> Job:
    """Enter an attempt of queued ``job`` whose worker was lost before it wrote anything.

    Called when the job's message comes again although the record is exactly as it was
    queued: an earlier delivery left no trace, so its worker started the job early and
    died (or vanished) before its claim. It counts as an attempt, ended ``worker_lost``.
    """
    if job.state != "queued":
        raise InvalidTransition(job, "queued")
    number = job.attempts + 1
    entry = AttemptEntry(
        number=number, worker=None, ended=now, outcome="worker_lost", error=WORKER_LOST
    )
    return msgspec.structs.replace(
        job,
        attempts=number,
        claims=job.claims + 1,
        attempt_log=_log(job, entry),
        error=WORKER_LOST,
        updated=now,
    )


def record_progress(
    job: Job, attempt: Attempt, fraction: float, message: str | None, now: datetime
) -> Job:
    """Note how far ``attempt`` is (``fraction`` clamped to 0..1)."""
    _check(job, attempt)
    return msgspec.structs.replace(
        job, progress=min(max(fraction, 0.0), 1.0), progress_message=message, updated=now
    )


def succeed(
    job: Job,
    attempt: Attempt,
    *,
    result: Any,
    result_ref: str | None,
    now: datetime,
    message: str | None = None,
) -> Job:
    """End ``job`` succeeded with the result of ``attempt`` (and its last progress message)."""
    _check(job, attempt)
    return _move(
        job,
        "succeeded",
        now,
        result=result,
        result_ref=result_ref,
        error=None,
        progress=1.0,
        progress_message=message if message is not None else job.progress_message,
        finished=now,
        attempt_log=_closed(job, "succeeded", now),
    )


def retry(job: Job, attempt: Attempt, error: JobError, now: datetime) -> Job:
    """Put ``job`` back in the queue after ``attempt`` failed; the next attempt comes later."""
    _check(job, attempt)
    if job.attempts >= job.max_attempts:
        raise InvalidTransition(job, "queued")
    return _move(job, "queued", now, error=error, attempt_log=_closed(job, "failed", now, error))


def release(job: Job, attempt: Attempt, now: datetime) -> Job:
    """Hand ``job`` back without counting ``attempt`` (its worker shuts down before it ends)."""
    _check(job, attempt)
    return _move(
        job,
        "queued",
        now,
        attempts=job.attempts - 1,
        progress=0.0,
        attempt_log=_closed(job, "released", now),
    )


def fail(job: Job, error: JobError, now: datetime, attempt: Attempt | None = None) -> Job:
    """End ``job`` failed: ``attempt`` failed for good, or (no attempt) its last worker was lost."""
    if attempt is not None:
        _check(job, attempt)
        log = _closed(job, "failed", now, error)
    else:
        log = _closed(job, "worker_lost", now, WORKER_LOST)
    return _move(job, "failed", now, error=error, finished=now, attempt_log=log)


def request_cancel(job: Job, now: datetime) -> Job:
    """Ask ``job`` to stop: a queued job ends cancelled now; a running one when its worker sees.

    Cancelling a cancelled job changes nothing; a job that succeeded or failed raises
    :class:`JobFinished`.
    """
    if job.state == "cancelled" or (job.state == "running" and job.cancel_requested):
        return job
    if job.state in TERMINAL:
        raise JobFinished(job.id, job.state)
    if job.state == "queued":
        return _move(job, "cancelled", now, cancel_requested=True, finished=now)
    return msgspec.structs.replace(job, cancel_requested=True, updated=now)


def cancel(job: Job, now: datetime, attempt: Attempt | None = None) -> Job:
    """End ``job`` cancelled, as its worker (running ``attempt``, if any) honours the request."""
    if attempt is not None:
        _check(job, attempt)
        log = _closed(job, "cancelled", now)
    else:  # cancelled as its message came again: an attempt still open lost its worker
        log = _closed(job, "worker_lost", now, WORKER_LOST)
    return _move(job, "cancelled", now, cancel_requested=True, finished=now, attempt_log=log)

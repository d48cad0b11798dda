"""How one attempt of a job ends: from the finished run to the record's change and the ack.

:class:`Run` is an attempt in progress as the worker tracks it; :func:`outcome_of` reads a
finished (or handed-back, or cancelled) run and says what the record becomes, whether the
message is acknowledged or put back with a delay, whether a dead letter goes out, and
which of the worker's counters it adds to. Pure but for the clock: the worker applies it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg

from aimesh.config import JobsSettings
from aimesh.errors import AimeshError, Forbidden, InvalidRequest, Unauthorized, foreign_message
from aimesh.jobs import states
from aimesh.jobs.handlers import JobContext
from aimesh.jobs.states import Attempt
from aimesh.jobs.types import Job, JobError

__all__ = ["Outcome", "Run", "Slot", "WorkerStats", "outcome_of"]

log = logging.getLogger("aimesh.jobs.worker")

_FENCED_LOCK = threading.Lock()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class WorkerStats:
    """What a worker did so far."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    skipped: int = 0
    fenced: int = 0
    """Side effects refused because their attempt was past its deadline or stopped."""

    def count_fenced(self) -> None:
        """Count a refused side effect (called from a handler's thread, too)."""
        with _FENCED_LOCK:
            self.fenced += 1


class Slot:
    """One of a worker's ``concurrency`` slots, held by one job: freed once, then no more."""

    __slots__ = ("_free",)

    def __init__(self, free: Callable[[], None]) -> None:
        self._free: Callable[[], None] | None = free

    def free(self) -> None:
        """Give the slot back (to the next job); a second call does nothing."""
        if self._free is not None:
            free, self._free = self._free, None
            free()


@dataclass
class Run:
    """One attempt in progress."""

    msg: Msg
    attempt: Attempt
    ctx: JobContext
    job: Job
    revision: int
    task: asyncio.Task[object] | None = None
    released: bool = False
    lost: bool = False
    """Another attempt took over (this worker's writes are fenced out): do not acknowledge."""
    last_flush: float = 0.0
    queued: Job | None = None
    """While the attempt is not claimed yet: the record as it was queued (at ``revision``).
    ``job`` is then what the record becomes once the claim is written."""
    abandoned: bool = False
    """The record moved on before the attempt was claimed: its message is decided again."""


@dataclass
class Outcome:
    """How an attempt ended, as the record will say."""

    change: Callable[[Job], Job]
    ack: bool
    dead_letter: JobError | None = None
    nak_delay: float | None = None
    counter: str = ""


def outcome_of(run: Run, settings: JobsSettings) -> Outcome:
    """How a finished (or handed-back) attempt ends: the record's change, ack or nak."""
    task, attempt, now = run.task, run.attempt, _now()
    release = Outcome(
        lambda j: states.release(j, attempt, now),
        ack=False,
        nak_delay=0.0,
        counter="released",
    )
    cancel = Outcome(lambda j: states.cancel(j, now, attempt), ack=True, counter="cancelled")
    if task is None:
        return release
    if task.cancelled():
        return release if run.released else cancel
    error = task.exception()
    if error is None:  # it finished, whatever it was asked meanwhile
        return _success(run, task.result(), settings)
    if run.released:
        return release
    if run.ctx.cancelled:
        return cancel
    return _failure(run, error, settings)


def _success(run: Run, result: object, settings: JobsSettings) -> Outcome:
    attempt, ref, now = run.attempt, run.ctx.result_ref, _now()
    try:
        size = len(msgspec.json.encode(result))
    except (TypeError, msgspec.EncodeError) as exc:
        error = InvalidRequest(f"the handler's result is not JSON: {exc}")
        return _failure(run, error, settings, "result_invalid")
    if size > settings.max_result_bytes:
        error = InvalidRequest(
            f"the result of {size} bytes exceeds {settings.max_result_bytes}; "
            "store it and set ctx.result_ref"
        )
        return _failure(run, error, settings, "result_too_large")
    reported = run.ctx._take_progress()  # its last word, if not written yet
    message = reported[1] if reported is not None else None
    return Outcome(
        lambda j: states.succeed(
            j, attempt, result=result, result_ref=ref, now=now, message=message
        ),
        ack=True,
        counter="succeeded",
    )


def _failure(
    run: Run, exc: BaseException, settings: JobsSettings, code: str | None = None
) -> Outcome:
    attempt, now = run.attempt, _now()
    if isinstance(exc, AimeshError):
        error = JobError(code or exc.code, exc.message)
    else:
        # The job's record is read over the API: the server's paths stay in the log.
        error = JobError(code or "handler_error", f"{type(exc).__name__}: {foreign_message(exc)}")
        log.warning("attempt %d of job %s failed", attempt.number, run.job.id, exc_info=exc)
    # A bad request, or a submitter who may not do what the job does: never retried.
    permanent = isinstance(exc, InvalidRequest | Forbidden | Unauthorized)
    if permanent or attempt.number >= run.job.max_attempts:
        return Outcome(
            lambda j: states.fail(j, error, now, attempt),
            ack=True,
            dead_letter=error,
            counter="failed",
        )
    delay = min(settings.backoff_s * 2 ** (attempt.number - 1), settings.backoff_max_s)
    return Outcome(
        lambda j: states.retry(j, attempt, error, now),
        ack=False,
        nak_delay=delay,
        counter="retried",
    )

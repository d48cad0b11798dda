"""What a job is: the spec a client submits and the record that follows it to its end.

Both are msgspec structs: they cross the bus (the job's message, its record in the jobs KV
bucket, the dead-letter message) and the REST API as JSON.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from aimesh.auth import LOCAL_OPERATOR, Identity
from aimesh.bus import JobState
from aimesh.errors import InvalidName, InvalidRequest

__all__ = [
    "ATTEMPT_LOG_MAX",
    "JOB_ID_PATTERN",
    "KIND_PATTERN",
    "TERMINAL",
    "AttemptEntry",
    "AttemptOutcome",
    "DeadLetter",
    "Job",
    "JobError",
    "JobSpec",
    "JobState",
    "check_job_id",
    "check_kind",
    "new_job_id",
]

KIND_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
"""A job kind: a lowercase name that is safe as a subject token and a consumer name."""
_KIND = re.compile(KIND_PATTERN)
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
"""A job id: 32 lowercase hex digits."""
_JOB_ID = re.compile(JOB_ID_PATTERN)

TERMINAL: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})
"""States a job never leaves."""

Kind = Annotated[str, msgspec.Meta(pattern=KIND_PATTERN, description="The job's kind.")]
Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# Checked by aimesh.outbound when submitted (url_refused), not by a pattern here, so that
# every refused URL gets the same answer.
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


def new_job_id() -> str:
    """A fresh job id: 32 hex digits."""
    return secrets.token_hex(16)


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a valid job kind, else raise :class:`InvalidName`."""
    if not _KIND.fullmatch(kind):
        raise InvalidName(
            f"job kind {kind!r} must be lowercase letters, digits, '_' or '-', "
            "starting with a letter (at most 64)",
            kind=kind,
        )
    return kind


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it looks like a job id, else raise :class:`InvalidRequest`."""
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidRequest(f"{job_id!r} is not a job id (32 hex digits)", job_id=job_id)
    return job_id


def _now() -> datetime:
    return datetime.now(UTC)


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a client asks for: run a job of ``kind`` on ``payload``."""

    kind: Kind
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    """The job's input, small JSON; large inputs are passed by reference (a dataset, a URI)."""
    idempotency_key: Key | None = None
    """Submitting again with the same key returns the first job instead of making another."""
    max_attempts: Attempts | None = None
    """Attempts before the job fails for good; unset: ``jobs.max_attempts``."""
    webhook_url: Url | None = None
    """Called (POST, the job record as JSON, HMAC-signed) when the job ends."""
    timeout_s: Seconds | None = None
    """An attempt running longer than this is stopped and counts as failed."""


class JobError(msgspec.Struct, frozen=True):
    """Why an attempt (or the job) failed: a stable code and a message."""

    code: str
    message: str


AttemptOutcome = Literal["succeeded", "failed", "cancelled", "released", "worker_lost"]
"""How an attempt ended: ``released`` when its worker handed it back as it stopped (not
counted against ``max_attempts``), ``worker_lost`` when its worker died or vanished before
it ended (counted)."""

ATTEMPT_LOG_MAX = 32
"""Attempts a record lists at most (the latest): handed-back ones are not bounded by
``max_attempts``."""


class AttemptEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery of a job to a worker, as its record lists it."""

    number: int
    """The attempt's number (a handed-back attempt's number is used again)."""
    worker: str | None
    """The worker that ran it; ``None`` for a delivery whose worker was lost before it
    wrote anything (it started the job at once, to claim it later)."""
    started: datetime | None = None
    ended: datetime | None = None
    outcome: AttemptOutcome | None = None
    """How it ended; ``None`` while it runs."""
    error: JobError | None = None
    """Why it failed, for ``failed`` and ``worker_lost``."""


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """The state record of one job, kept in the jobs KV bucket under ``job.<id>``."""

    id: str
    kind: str
    state: JobState
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    max_attempts: int
    attempts: int = 0
    """Attempts started so far (the current one included while running)."""
    claims: int = 0
    """Attempts started, handed-back ones included: names the current one (never decreases)."""
    attempt_log: list[AttemptEntry] = msgspec.field(default_factory=list)
    """Every delivery of the job to a worker, oldest first (the latest ``ATTEMPT_LOG_MAX``),
    with how it ended: a killed attempt shows as ``worker_lost``."""
    progress: float = 0.0
    """How far the current attempt is, from 0 to 1, as its handler reports it."""
    progress_message: str | None = None
    result: Any = None
    """The handler's result when small (JSON), else ``None`` and a ``result_ref``."""
    result_ref: str | None = None
    error: JobError | None = None
    """Why the last attempt failed (kept while a retry waits), or why the job failed."""
    cancel_requested: bool = False
    worker: str | None = None
    """The worker running (or that last ran) the job."""
    seq: int | None = None
    """Stream sequence of the job's message once a worker took it: another copy is a duplicate."""
    delivery: str | None = None
    """The reply subject of the delivery the current attempt runs: through it, a worker that
    sees the attempt's worker gone hands the message back at once (see
    :mod:`aimesh.jobs.peers`)."""
    idempotency_key: str | None = None
    webhook_url: str | None = None
    timeout_s: float | None = None
    retry_of: str | None = None
    """The failed or cancelled job this one runs again (``aimesh jobs retry``)."""
    submitted_by: str | None = None
    """Who submitted the job, as :meth:`aimesh.auth.Identity.header` writes it
    (``name;scope,scope``); set by the service from the caller, never by the caller's body.
    Unset: the local operator."""
    created: datetime = msgspec.field(default_factory=_now)
    updated: datetime = msgspec.field(default_factory=_now)
    started: datetime | None = None
    """When the current (or last) attempt started."""
    finished: datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the job reached a terminal state."""
        return self.state in TERMINAL

    @property
    def identity(self) -> Identity:
        """Who submitted the job: what its handler may do on their behalf."""
        if self.submitted_by is None:
            return LOCAL_OPERATOR
        return Identity.from_header(self.submitted_by)

    @classmethod
    def from_spec(
        cls,
        spec: JobSpec,
        *,
        job_id: str,
        max_attempts: int,
        retry_of: str | None = None,
        submitted_by: str | None = None,
    ) -> Job:
        """The queued record of a new job (that runs ``retry_of`` again, if given)."""
        now = _now()
        return cls(
            id=job_id,
            kind=spec.kind,
            state="queued",
            payload=spec.payload,
            max_attempts=spec.max_attempts or max_attempts,
            idempotency_key=spec.idempotency_key,
            webhook_url=spec.webhook_url,
            timeout_s=spec.timeout_s,
            retry_of=retry_of,
            submitted_by=submitted_by,
            created=now,
            updated=now,
        )


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A job that failed for good, as published on ``aimesh.dlq.jobs.<kind>``."""

    job: Job
    reason: JobError
    attempts: int
    worker: str
    at: datetime = msgspec.field(default_factory=_now)

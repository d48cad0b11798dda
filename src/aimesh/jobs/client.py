"""The jobs core: submit, read, list, cancel and watch jobs on the bus.

:class:`JobClient` is what the REST API, the CLI and the gateway's ``?async=true`` path
call. It needs nothing but a bus connection and the jobs settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import Header

from aimesh.auth import Identity
from aimesh.bus import (
    Bus,
    JobEvent,
    JobState,
    declare_topology,
    storage_full,
)
from aimesh.config import JobsSettings
from aimesh.errors import (
    AimeshError,
    BusUnavailable,
    DeadlineExceeded,
    IdempotencyConflict,
    InvalidRequest,
    JobFailed,
    JobNotFound,
    JobNotRetryable,
    QueueFull,
)
from aimesh.jobs import states
from aimesh.jobs.events import change_between, job_event, notify_cancel
from aimesh.jobs.store import Binding, JobStore, encode_job
from aimesh.jobs.types import TERMINAL, Job, JobError, JobSpec, check_job_id, check_kind, new_job_id
from aimesh.jobs.webhooks import WebhookSender, check_webhook

__all__ = ["COPY_HEADER", "REVISION_HEADER", "JobClient", "job_subject", "request_digest"]

log = logging.getLogger("aimesh.jobs")

REVISION_HEADER = "Aimesh-Job-Revision"
"""On a job's message: the revision of the record published with it."""
COPY_HEADER = "Aimesh-Job-Copy"
"""On a job's message published again (a repeated submission): workers claim the job
before they start it (see :mod:`aimesh.jobs.early`)."""
# How long a duplicate submission waits for the first one's record before taking the key.
_BOUND_RECORD_WAIT_S = 2.0
# When a submission refused for a lost bus may be tried again: the connection tries the
# server every second, a caller a little less often.
_BUS_LOST_RETRY_S = 2.0


def job_subject(kind: str) -> str:
    """The subject a job of ``kind`` is published on: ``aimesh.jobs.<kind>``."""
    return f"aimesh.jobs.{kind}"


def _now() -> datetime:
    return datetime.now(UTC)


def request_digest(spec: JobSpec) -> str:
    """The digest of what ``spec`` asks (all but its idempotency key), as canonical JSON."""
    asked = msgspec.structs.replace(spec, idempotency_key=None)
    return hashlib.sha256(msgspec.json.encode(asked, order="sorted")).hexdigest()


class JobClient:
    """Submit, read, list, cancel and watch jobs."""

    def __init__(self, bus: Bus, store: JobStore, settings: JobsSettings) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self._webhooks = WebhookSender.of(settings)

    @classmethod
    async def open(cls, bus: Bus, settings: JobsSettings, *, declare: bool = True) -> JobClient:
        """A client on ``bus``; with ``declare``, the streams and buckets are created first."""
        if declare:
            await declare_topology(bus)
        return cls(bus, await JobStore.open(bus), settings)

    async def close(self) -> None:
        """Let webhook calls in flight finish (within their timeout), then stop them."""
        await self._webhooks.close(self.settings.webhook_timeout_s)
        await self.store.close()

    # -- submit -------------------------------------------------------------------------

    async def check_webhook(self, url: str | None) -> None:
        """Refuse (``url_refused``) a webhook URL this system may not call; nothing else."""
        await check_webhook(url, self._webhooks.policy)

    async def submit(
        self,
        spec: JobSpec,
        *,
        retry_of: str | None = None,
        identity: Identity | None = None,
        digest: str | None = None,
    ) -> Job:
        """Queue a job; with an idempotency key already used, return that key's job instead.

        The key is bound to the digest of its first request (``digest``, or
        :func:`request_digest` of ``spec``): submitted again with another request, it raises
        :class:`IdempotencyConflict`. ``identity`` is who submits (recorded as the job's
        ``submitted_by``; unset: the local operator). Raises :class:`InvalidRequest` for a
        payload over ``jobs.max_payload_bytes``, :class:`~aimesh.errors.UrlRefused` for a
        webhook URL that may not be called, :class:`QueueFull` when the job queue (or the
        jobs bucket) is at its size limit (``bus.jobs_max_bytes``, ``bus.jobs_max_msgs``):
        the job's record then ends failed with code ``queue_full``; :class:`BusUnavailable`
        when the bus does not store the job, at once (before anything is written) while the
        bus connection is lost (:meth:`check_connected`).
        """
        check_kind(spec.kind)
        await self.check_webhook(spec.webhook_url)
        size = len(msgspec.json.encode(spec.payload))
        if size > self.settings.max_payload_bytes:
            raise InvalidRequest(
                f"job payload of {size} bytes exceeds the limit of "
                f"{self.settings.max_payload_bytes}; pass large inputs by reference",
                size=size,
                limit=self.settings.max_payload_bytes,
            )
        self.check_connected()
        job = Job.from_spec(
            spec,
            job_id=new_job_id(),
            max_attempts=self.settings.max_attempts,
            retry_of=retry_of,
            submitted_by=identity.header() if identity is not None else None,
        )
        if spec.idempotency_key is not None:
            binding = Binding(job.id, digest or request_digest(spec))
            existing = await self._bind(spec.idempotency_key, binding)
            if existing is not None:
                return existing
        revision = await self.store.create(job)
        await self._publish(job, revision)
        return job

    def check_connected(self) -> None:
        """Refuse a submission at once while the bus connection is lost (reconnecting).

        Raises :class:`BusUnavailable` with a ``Retry-After``. Tried anyway, the first write
        would wait out its JetStream timeout, and nats-py would keep it to send once the
        bus is back: a record or a bound idempotency key after an answer that said 503.
        """
        if not self.bus.connected:
            lost = BusUnavailable(
                f"the bus at {self.bus.url} is lost (reconnecting); nothing was queued, "
                "retry shortly"
            )
            lost.retry_after_s = _BUS_LOST_RETRY_S
            raise lost

    async def _bind(self, key: str, binding: Binding) -> Job | None:
        """Bind ``key`` as ``binding`` says; or the job the key is bound to (re-queued if
        needed). Raises :class:`IdempotencyConflict` if it is bound to another request."""
        while True:
            bound = await self.store.bind_key(key, binding)
            if bound is None:
                return None
            first, revision = bound
            if first.digest is not None and first.digest != binding.digest:
                raise IdempotencyConflict(first.job)
            found = await self._await_record(first.job)
            if found is not None:
                job, revision = found
                if job.state == "queued":
                    # The first submission may have stored its record and then lost the bus
                    # before publishing; publishing again is deduplicated (same message id),
                    # and a copy that outlives the dedup window is dropped by workers. The
                    # copy is marked: workers claim it before they start it.
                    await self._publish(job, revision, copy=True)
                return job
            # The first submission died between binding the key and storing its job.
            if await self.store.rebind_key(key, binding, revision):
                return None

    async def _await_record(self, job_id: str) -> tuple[Job, int] | None:
        deadline = time.monotonic() + _BOUND_RECORD_WAIT_S
        while True:
            try:
                return await self.store.get(job_id)
            except JobNotFound:
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(0.05)

    async def _publish(self, job: Job, revision: int, *, copy: bool = False) -> None:
        subject = job_subject(job.kind)
        headers = {Header.MSG_ID.value: job.id, REVISION_HEADER: str(revision)}
        if copy:
            headers[COPY_HEADER] = "1"
        try:
            await self.store.writes.publish(subject, encode_job(job), headers)
        except nats.js.errors.NoStreamResponseError as exc:
            raise BusUnavailable(
                f"no stream on the bus at {self.bus.url} stores {subject}; "
                "declare the topology first"
            ) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            if storage_full(exc):
                full = QueueFull(
                    f"job {job.id} was refused: the job queue is full; retry later, or run "
                    "more workers (its limits are bus.jobs_max_bytes and bus.jobs_max_msgs)",
                    job_id=job.id,
                )
                await self._end_unqueued(job, revision, full)
                raise full from exc
            raise BusUnavailable(f"job {job.id} was not queued on the bus: {exc}") from exc

    async def _end_unqueued(self, job: Job, revision: int, error: QueueFull) -> None:
        """End a record whose message the queue refused, so that it never waits queued."""
        reason = JobError(code=error.code, message=error.message)
        try:
            await self.store.change(
                job.id,
                lambda current: (
                    states.fail(current, reason, _now()) if current.state == "queued" else current
                ),
                known=(job, revision),
            )
        except AimeshError as exc:  # the record expires with its bucket's TTL anyway
            log.warning("job %s refused by a full queue, record not ended: %s", job.id, exc)

    # -- read ---------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The record of a job; :class:`JobNotFound` if there is none."""
        job, _revision = await self.store.get(check_job_id(job_id))
        return job

    async def list(
        self, *, kind: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first (of one ``kind``, in one ``state``), at most ``limit``."""
        if kind is not None:
            check_kind(kind)
        return await self.store.list(kind=kind, state=state, limit=limit)

    async def retry(self, job_id: str, *, identity: Identity | None = None) -> Job:
        """Run a failed or cancelled job again, as a new job (``retry_of`` names the old one).

        The new job has the old one's kind, payload, attempts, timeout and webhook. A job is
        retried once: asking again returns that same retry (its idempotency key is
        ``retry:<old id>``), so a client may repeat the call safely; to go again, retry the
        retry. Raises :class:`JobNotRetryable` for a job that is queued, running or
        succeeded. (An async inference keeps its request a day: retried later, the new job
        fails at once, its request gone.) ``identity``: who retries (unset: the one who
        submitted the old job).
        """
        self.check_connected()
        job = await self.get(job_id)
        if job.state not in ("failed", "cancelled"):
            raise JobNotRetryable(job.id, job.state)
        spec = JobSpec(
            kind=job.kind,
            payload=job.payload,
            idempotency_key=f"retry:{job.id}",
            max_attempts=job.max_attempts,
            webhook_url=job.webhook_url,
            timeout_s=job.timeout_s,
        )
        if identity is None and job.submitted_by is not None:
            identity = Identity.from_header(job.submitted_by)
        return await self.submit(spec, retry_of=job.id, identity=identity)

    # -- cancel -------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once; a running one when its worker sees the request.

        Returns the record after the request. Cancelling a cancelled job is a no-op; a job
        that succeeded or failed raises :class:`~aimesh.errors.JobFinished`.
        """
        wrote = False

        def ask(current: Job) -> Job:
            nonlocal wrote
            asked = states.request_cancel(current, _now())
            wrote = asked is not current
            return asked

        job, revision = await self.store.change(check_job_id(job_id), ask)
        if not wrote:  # cancelled already (perhaps by a concurrent call): told already
            return job
        # Told to the workers either way: one may have just started the job unclaimed.
        await notify_cancel(self.bus, job, revision)
        if job.state == "cancelled":
            self._webhooks.send(job)
        return job

    # -- watch --------------------------------------------------------------------------

    async def watch(
        self, job_id: str, *, idle_s: float = 15.0
    ) -> AsyncGenerator[JobEvent | None, None]:
        """The job's current state, then each change, ending after a terminal state.

        Yields ``None`` after ``idle_s`` seconds without a change (a keep-alive for
        streams such as SSE). Each event is a revision of the job's record (see
        :mod:`aimesh.jobs.events`).
        """
        before: Job | None = None
        revisions = self.store.watch(check_job_id(job_id), idle_s=idle_s)
        try:
            async for versioned in revisions:
                if versioned is None:
                    yield None
                    continue
                job, revision = versioned
                yield job_event(job, revision, change_between(before, job))
                if job.done:
                    return
                before = job
        finally:
            await revisions.aclose()

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Wait until the job ends; return it if it succeeded.

        Raises :class:`JobFailed` if it failed or was cancelled, :class:`DeadlineExceeded`
        after ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                stream = self.watch(job_id)
                try:
                    async for event in stream:
                        if event is not None and event.state in TERMINAL:
                            break
                finally:
                    await stream.aclose()
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"job {job_id} did not end within {timeout:g}s", job_id=job_id
            ) from exc
        job = await self.get(job_id)
        if job.state != "succeeded":
            raise JobFailed(
                job.id,
                job.state,
                job.error.code if job.error else None,
                job.error.message if job.error else None,
            )
        return job

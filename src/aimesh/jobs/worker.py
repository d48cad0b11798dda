"""The one consumer loop every job kind reuses: pull, run, heartbeat, acknowledge when done.

A :class:`Worker` pulls the messages of one kind from a durable JetStream consumer on the
work-queue stream (``jobs-<kind>``, shared by every worker of that kind) and runs each
with the kind's handler:

- it marks the job running (attempt *n*) in its record, then runs the handler while a
  heartbeat tells JetStream the message is in progress (every third of ``ack_wait``) and
  writes the reported progress;
- except where it may start the job *early* (a fresh message on its first delivery, see
  :mod:`aimesh.jobs.early`): then it runs the handler at once and writes the claim only
  after ``claim_after_s`` or at the first progress report, so that a job which ends
  sooner has its record written once, queued to its outcome;
- it acknowledges the message only once the outcome is in the record: succeeded, failed
  for good (after publishing a dead letter on ``aimesh.dlq.jobs.<kind>``), or cancelled;
- a retryable failure puts the job back in the queue and *naks* the message with a delay
  that doubles per attempt; a worker that dies stops heartbeating, so JetStream hands
  the message to another worker after ``ack_wait``, which starts the next attempt, or
  fails the job when its attempts are spent;
- a cancel request reaches the worker as an event (and on its next heartbeat) and
  cancels the handler's task; the job ends cancelled;
- :meth:`Worker.stop` drains: no more pulls, running jobs get ``drain_timeout_s`` to end,
  then they are handed back (not counted as an attempt) for another worker.

A job holds one of the worker's ``concurrency`` slots from its delivery until its handler
returns; writing the outcome and acknowledging then go on beside the next job, so that
at most ``concurrency`` handlers run at once but the bus's round trips for finished jobs
do not keep new ones waiting (short jobs spend most of their time in those round trips).

Records change only through :mod:`aimesh.jobs.states` under optimistic concurrency, and
each write of an attempt is fenced by its number and worker (an attempt started early, by
the revision it was queued at, until it is claimed): a job completes once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header

from aimesh.bus import JOBS_STREAM, Bus, JobState, job_events_subject
from aimesh.config import JobsSettings
from aimesh.errors import AimeshError, BusUnavailable, DeadlineExceeded, JobNotFound
from aimesh.jobs import states
from aimesh.jobs._wire import Pulls
from aimesh.jobs.attempts import Run, outcome_of
from aimesh.jobs.client import COPY_HEADER, REVISION_HEADER, job_subject
from aimesh.jobs.early import EarlyStarts
from aimesh.jobs.handlers import Handler, JobContext, call_handler
from aimesh.jobs.states import Attempt, InvalidTransition, StaleAttempt
from aimesh.jobs.store import JobStore, RevisionMismatch, decode_job
from aimesh.jobs.types import DeadLetter, Job, JobError, check_kind
from aimesh.jobs.webhooks import WebhookSender

__all__ = ["Worker", "WorkerStats", "consumer_name", "dead_letter_subject"]

log = logging.getLogger("aimesh.jobs.worker")

# How long one pull waits for messages: also how long a stop waits for the pull to end.
_PULL_S = 1.0
# After the drain timeout, how long handed-back jobs get to write their record and nak.
_RELEASE_S = 5.0

_dead_letters = msgspec.json.Encoder()


def consumer_name(kind: str) -> str:
    """The durable consumer every worker of ``kind`` shares."""
    return f"jobs-{kind}"


def dead_letter_subject(kind: str) -> str:
    """Where jobs of ``kind`` that failed for good are published: ``aimesh.dlq.jobs.<kind>``."""
    return f"aimesh.dlq.jobs.{kind}"


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


class _Slot:
    """One of a worker's ``concurrency`` slots, held by one job: freed once, then no more."""

    __slots__ = ("_free",)

    def __init__(self, free: Callable[[], None]) -> None:
        self._free: Callable[[], None] | None = free

    def free(self) -> None:
        """Give the slot back (to the next job); a second call does nothing."""
        if self._free is not None:
            free, self._free = self._free, None
            free()


class Worker:
    """Runs the jobs of one kind with one handler, ``concurrency`` at a time."""

    def __init__(
        self,
        bus: Bus,
        kind: str,
        handler: Handler,
        *,
        settings: JobsSettings,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.bus = bus
        self.kind = check_kind(kind)
        self.handler = handler
        self.settings = settings
        self.concurrency = concurrency or settings.concurrency
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self.ready = asyncio.Event()
        """Set once the worker pulls (its consumer exists)."""
        self._heartbeat_s = settings.ack_wait_s / 3
        # Claimed before the first heartbeat, which checks the claim.
        self._claim_after_s = min(settings.claim_after_s, self._heartbeat_s)
        self._early = EarlyStarts(bus, copy_header=COPY_HEADER, revision_header=REVISION_HEADER)
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._wake = asyncio.Event()
        """Set when the pull loop has something to do: slots freed, a request ended, a stop."""
        self._batch = max(1, self.concurrency // 4)
        self._pulls: Pulls | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0
        """Slots taken: jobs delivered whose handler has not returned yet."""
        self._runs: dict[str, Run] = {}
        self._store: JobStore | None = None
        secret = settings.webhook_secret
        self._webhooks = WebhookSender(
            secret=secret.get_secret_value() if secret is not None else None,
            timeout_s=settings.webhook_timeout_s,
            attempts=settings.webhook_attempts,
        )

    def stop(self, *, hand_back: bool = False) -> None:
        """Stop pulling and drain (see the module's doc); :meth:`run` returns when done.

        With ``hand_back`` (or called a second time with it), running jobs are handed back
        at once instead of being given ``drain_timeout_s`` to end.
        """
        self._stopping.set()
        self._wake.set()
        if hand_back:
            self._hurry.set()

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._runs)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (the worker drains, or has stopped)."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Pull and run jobs until :meth:`stop`, then drain and return."""
        try:
            self._store = await JobStore.open(self.bus)
            pulls = await self._subscribe()
            cancels = await self._watch_cancels()
            self.ready.set()
            log.info(
                "worker %s runs jobs of kind %s, %d at a time", self.id, self.kind, self.concurrency
            )
            try:
                await self._pull(pulls)
            finally:
                await self._drain()
                try:
                    await pulls.close()
                    if not self.bus.nc.is_closed:
                        await cancels.unsubscribe()
                except (nats.errors.Error, TimeoutError) as exc:
                    log.debug("unsubscribe failed: %s", exc)
        finally:
            await self._webhooks.close(self.settings.webhook_timeout_s)
            if self._store is not None:
                await self._store.close()

    # -- pulling ------------------------------------------------------------------------

    async def _subscribe(self) -> Pulls:
        name = consumer_name(self.kind)
        config = ConsumerConfig(
            durable_name=name,
            description=f"The workers of job kind {self.kind}.",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            # Attempts are counted in the job's record, per job: JetStream must never give
            # up on a message by itself (it would stay in the stream, its job stuck).
            max_deliver=-1,
            filter_subject=job_subject(self.kind),
        )
        self._pulls = Pulls(
            self.bus, JOBS_STREAM, name, take=self._take, on_end=self._wake.set, expires_s=_PULL_S
        )
        try:
            await self.bus.js.add_consumer(JOBS_STREAM, config)
            await self._pulls.start()
            return self._pulls
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(
                f"cannot consume jobs of kind {self.kind} on the bus at {self.bus.url}: {exc}"
            ) from exc

    async def _watch_cancels(self) -> Subscription:
        async def cancel_requested(msg: Msg) -> None:
            job_id = msg.subject.split(".")[3]
            run = self._runs.get(job_id)
            if run is not None:
                run.ctx._cancel()
            self._early.heard_cancel(job_id)

        try:
            sub: Subscription = await self.bus.nc.subscribe(
                job_events_subject("*", "cancel_requested"), cb=cancel_requested
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"cannot watch cancel requests: {exc}") from exc
        await self._early.start()
        return sub

    async def _pull(self, pulls: Pulls) -> None:
        while not self._stopping.is_set():
            want = self._room()
            if want:
                try:
                    await pulls.request(want)
                except nats.errors.ConnectionClosedError:
                    return
                except nats.errors.Error as exc:
                    log.warning("pulling jobs of kind %s failed: %s", self.kind, exc)
                    await asyncio.sleep(_PULL_S)
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(_PULL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass  # look again: a request whose end was lost stops counting after a while

    def _room(self) -> int:
        """How many more messages to ask for now (0: none, or too few to be worth a request).

        Requests ask for a quarter of the slots at a time when jobs end quickly, not one
        per slot; whatever is free when nothing is asked for.
        """
        assert self._pulls is not None
        owed = self._pulls.owed
        free = self.concurrency - self._busy - owed
        return free if free >= self._batch or (free > 0 and not owed) else 0

    def _take(self, msg: Msg) -> bool:
        if self._stopping.is_set() or self._busy >= self.concurrency:
            return False  # handed back (a request answered as the worker began to stop)
        self._busy += 1
        task = asyncio.create_task(self._handle(msg, _Slot(self._free)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _free(self) -> None:
        self._busy -= 1
        if not self._wake.is_set() and self._room():
            self._wake.set()

    async def _drain(self) -> None:
        if self._tasks and not self._hurry.is_set():
            hurry = asyncio.ensure_future(self._hurry.wait())
            ended = asyncio.ensure_future(asyncio.wait(set(self._tasks)))
            await asyncio.wait(
                (hurry, ended),
                timeout=self.settings.drain_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            hurry.cancel()
            ended.cancel()
        for run in self._runs.values():
            run.released = True
            run.ctx._cancel()  # a handler in a thread sees it (ctx.cancelled)
            if run.task is not None:
                run.task.cancel()
        if self._tasks:
            _done, late = await asyncio.wait(set(self._tasks), timeout=_RELEASE_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # -- one message --------------------------------------------------------------------

    async def _handle(self, msg: Msg, slot: _Slot) -> None:
        try:
            await self._process(msg, slot)
        except (AimeshError, nats.errors.Error, TimeoutError) as exc:
            # Not acknowledged: JetStream delivers the message again after ack_wait.
            log.warning("job message %s left for redelivery: %s", _seq(msg), exc)
        except Exception:
            log.exception("unexpected error on job message %s; left for redelivery", _seq(msg))
        finally:
            slot.free()

    async def _process(self, msg: Msg, slot: _Slot) -> None:
        assert self._store is not None
        seq = _seq(msg)
        try:
            copy = decode_job(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("job message %d is not a job (%s); terminated", seq, exc)
            await msg.term()
            return
        headers = msg.headers or {}
        revision = int(headers.get(REVISION_HEADER, "0"))
        if (
            self._claim_after_s > 0
            and self._early.allow(msg, copy.id, headers)
            and states.on_delivery(copy, seq) == "start"
        ):
            # Start now, claim later (see aimesh.jobs.early and _claim_late).
            started, first = states.start(copy, worker=self.id, seq=seq, now=_now())
            await self._attempt(msg, started, revision, first, slot, queued=copy)
            return
        try:
            known = (copy, revision) if revision else await self._store.get(copy.id)
            decision, job, revision, attempt = await self._claim(copy.id, seq, known)
        except JobNotFound:
            log.error("job %s has no record (expired?); its message is dropped", copy.id)
            await msg.term()
            return
        if decision in ("skip", "duplicate"):
            self.stats.skipped += 1
            await msg.ack()
        elif decision == "cancel":
            self.stats.cancelled += 1
            await self._ended(msg, job)
        elif decision == "exhausted":
            error = JobError(
                "attempts_exhausted",
                f"the worker of attempt {job.attempts} of {job.max_attempts} was lost",
            )
            await self._dead_letter(states.fail(job, error, _now()), error)
            job, revision = await self._store.change(
                job.id, lambda j: states.fail(j, error, _now()), known=(job, revision)
            )
            self.stats.failed += 1
            await self._ended(msg, job)
        else:
            assert attempt is not None
            await self._attempt(msg, job, revision, attempt, slot)

    async def _claim(
        self, job_id: str, seq: int, known: tuple[Job, int]
    ) -> tuple[states.Delivery, Job, int, Attempt | None]:
        """Decide what to do with the message, and start the attempt if that is the answer."""
        assert self._store is not None
        decision: states.Delivery = "skip"
        attempt: Attempt | None = None

        def claim(job: Job) -> Job:
            nonlocal decision, attempt
            decision = states.on_delivery(job, seq)
            if decision == "start":
                started, attempt = states.start(job, worker=self.id, seq=seq, now=_now())
                return started
            if decision == "cancel":
                return states.cancel(job, _now())
            return job

        job, revision = await self._store.change(job_id, claim, known=known)
        return decision, job, revision, attempt

    async def _ended(self, msg: Msg, job: Job) -> None:
        await msg.ack()
        self._webhooks.send(job)

    async def _dead_letter(self, job: Job, reason: JobError) -> None:
        letter = DeadLetter(job=job, reason=reason, attempts=job.attempts, worker=self.id)
        subject = dead_letter_subject(job.kind)
        headers = {Header.MSG_ID.value: job.id, "Aimesh-Reason": reason.code}
        assert self._store is not None
        try:
            await self._store.writes.publish(subject, _dead_letters.encode(letter), headers)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"dead letter of job {job.id} not stored: {exc}") from exc

    # -- one attempt --------------------------------------------------------------------

    async def _attempt(
        self,
        msg: Msg,
        job: Job,
        revision: int,
        attempt: Attempt,
        slot: _Slot,
        *,
        queued: Job | None = None,
    ) -> None:
        run = Run(msg, attempt, JobContext(job, attempt.number, self.bus), job, revision)
        run.queued = queued
        self._runs[job.id] = run
        try:
            if self._stopping.is_set():
                run.released = True  # claimed while the worker began to stop: hand it back
            else:
                run.last_flush = time.monotonic()
                run.task = asyncio.create_task(self._call(run.ctx, job.timeout_s))
                await self._supervise(run)
            slot.free()
            await self._conclude(run)
        finally:
            if self._runs.get(job.id) is run:  # not a later attempt of the same job
                del self._runs[job.id]
            if run.task is not None and not run.task.done():
                run.task.cancel()

    async def _call(self, ctx: JobContext, timeout_s: float | None) -> object:
        if timeout_s is None:
            return await call_handler(self.handler, ctx)
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await call_handler(self.handler, ctx)
        except TimeoutError as exc:
            if deadline.expired():
                raise DeadlineExceeded(
                    f"attempt {ctx.attempt} ran longer than the job's timeout of {timeout_s:g}s"
                ) from exc
            raise

    async def _supervise(self, run: Run) -> None:
        """Wait for the handler; meanwhile heartbeat, write progress, honour a cancel."""
        assert run.task is not None
        await asyncio.sleep(0)  # a handler with nothing to wait for ends here, at no cost
        interval = self.settings.progress_interval_s
        next_beat = time.monotonic() + self._heartbeat_s
        claim_at = run.last_flush + self._claim_after_s
        while not run.task.done():
            run.ctx._wake.clear()
            now = time.monotonic()
            wait = next_beat - now
            if run.queued is not None:
                wait = min(wait, claim_at - now)
            if run.ctx._reported is not None:
                wait = min(wait, run.last_flush + interval - now)
            waker = asyncio.ensure_future(run.ctx._wake.wait())
            try:
                await asyncio.wait(
                    (run.task, waker), timeout=max(wait, 0), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waker.cancel()
            if run.task.done():
                break
            if run.ctx.cancelled or run.lost or run.abandoned:
                run.ctx._cancel()  # a handler in a thread sees it (ctx.cancelled)
                run.task.cancel()
                continue
            try:
                now = time.monotonic()
                if run.queued is not None and (now >= claim_at or run.ctx._reported is not None):
                    claim_at = now + self._heartbeat_s  # the next try, should this one fail
                    await self._claim_late(run)
                    continue
                if now >= next_beat:
                    next_beat = now + self._heartbeat_s
                    if run.queued is not None:  # not claimed yet (its claim failed)
                        await run.msg.in_progress()
                    else:
                        await self._heartbeat(run)
                if run.ctx._reported is not None and now >= run.last_flush + interval:
                    await self._write_progress(run)
            except (AimeshError, nats.errors.Error, TimeoutError) as exc:
                log.warning("heartbeat of job %s failed: %s", run.job.id, exc)

    async def _heartbeat(self, run: Run) -> None:
        assert self._store is not None
        await run.msg.in_progress()
        job, revision = await self._store.get(run.job.id)
        if job.state != "running" or job.claims != run.attempt.claim:
            log.warning("job %s was taken over by %s; stopping attempt", job.id, job.worker)
            run.lost = True
        elif job.cancel_requested:
            run.ctx._cancel()
        run.job, run.revision = job, revision

    async def _write_progress(self, run: Run) -> None:
        assert self._store is not None
        reported = run.ctx._take_progress()
        if reported is None:
            return
        fraction, message = reported
        run.last_flush = time.monotonic()
        try:
            job, revision = await self._store.change(
                run.job.id,
                lambda j: states.record_progress(j, run.attempt, fraction, message, _now()),
                known=(run.job, run.revision),
            )
        except StaleAttempt:
            run.lost = True
            return
        run.job, run.revision = job, revision
        if job.cancel_requested:
            run.ctx._cancel()

    async def _claim_late(self, run: Run) -> None:
        """Write the claim of an attempt that started unclaimed: ``queued`` -> ``running``.

        The write expects the record as it was queued. If it moved on meanwhile (cancelled,
        or expired), the attempt is abandoned: its handler is cancelled and its message
        handed back at once, to be decided again from the record (a cancelled job's
        message is then acknowledged; nothing of the attempt is written).
        """
        assert self._store is not None and run.queued is not None
        try:
            run.revision = await self._store.update(run.job, run.revision)
        except RevisionMismatch:
            ours = await self._written(run, "running")
            if ours is None:
                log.info(
                    "job %s changed before its attempt was claimed; deciding again", run.job.id
                )
                run.abandoned = True
            else:
                run.job, run.revision = ours
        run.queued = None

    async def _written(self, run: Run, state: JobState) -> tuple[Job, int] | None:
        """The record, if it says what this attempt wrote (a write whose ack was lost)."""
        assert self._store is not None
        job, revision = await self._store.get(run.job.id)
        mine = job.worker == self.id and job.claims == run.attempt.claim and job.state == state
        return (job, revision) if mine else None

    async def _succeed_unclaimed(self, run: Run, succeeded: Job) -> None:
        """Write an unclaimed attempt's success over the queued record: one write in all."""
        assert self._store is not None
        try:
            await self._store.update(succeeded, run.revision)
        except RevisionMismatch:
            if await self._written(run, "succeeded") is None:
                log.info("job %s changed while it ran unclaimed; its result is dropped", run.job.id)
                await run.msg.nak()  # decided again from the record
                return
        self.stats.succeeded += 1
        await run.msg.ack()
        self._webhooks.send(succeeded)

    async def _conclude(self, run: Run) -> None:
        assert self._store is not None
        if run.lost:
            return  # the attempt that took over owns the message now
        outcome = outcome_of(run, self.settings)
        if run.queued is not None:  # never claimed: the attempt ended within claim_after_s
            if outcome.counter == "released":
                self.stats.released += 1
                await run.msg.nak()  # nothing was written: not an attempt
                return
            if outcome.counter == "succeeded":
                await self._succeed_unclaimed(run, outcome.change(run.job))
                return
            await self._claim_late(run)  # a failure or cancel is written the usual way
        if run.abandoned:
            await run.msg.nak()
            return
        if outcome.dead_letter is not None:
            # Before the record says failed: a crash in between leaves the job to be failed
            # again (same dead letter, deduplicated), never failed without its dead letter.
            await self._dead_letter(outcome.change(run.job), outcome.dead_letter)
        try:
            job, _ = await self._store.change(
                run.job.id, outcome.change, known=(run.job, run.revision)
            )
        except (StaleAttempt, InvalidTransition) as exc:
            log.warning("outcome of job %s not recorded: %s", run.job.id, exc)
            return
        setattr(self.stats, outcome.counter, getattr(self.stats, outcome.counter) + 1)
        if outcome.ack:
            await run.msg.ack()
            self._webhooks.send(job)
        else:
            await run.msg.nak(delay=outcome.nak_delay or None)


def _seq(msg: Msg) -> int:
    seq: int = msg.metadata.sequence.stream
    return seq

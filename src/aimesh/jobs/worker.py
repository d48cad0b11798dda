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
  fails the job when its attempts are spent; sooner when its discovery entry is gone:
  the other workers of its kind, or the next one to start, then hand its jobs back at
  once (:mod:`aimesh.jobs.peers`; they may, as they all share the kind's consumer);
- every delivery is an entry of the record's ``attempt_log``, the lost ones included
  (``worker_lost``);
- a cancel request reaches the worker as an event (and on its next heartbeat) and
  cancels the handler's task; the job ends cancelled;
- :meth:`Worker.stop` drains: no more pulls, running jobs get ``drain_timeout_s`` to end,
  then they are handed back (not counted as an attempt) for another worker.

A job holds one of the worker's ``concurrency`` slots from its delivery until its handler
returns; writing the outcome and acknowledging then go on beside the next job, so that
at most ``concurrency`` handlers run at once but the bus's round trips for finished jobs
do not keep new ones waiting (short jobs spend most of their time in those round trips).

The worker pulls, decides what each delivery means and drains; the attempts themselves
(handler, heartbeat, progress, claim, outcome, ack) run in :mod:`aimesh.jobs.runner`.

Records change only through :mod:`aimesh.jobs.states` under optimistic concurrency, and
each write of an attempt is fenced by its number and worker (an attempt started early, by
the revision it was queued at, until it is claimed): a job completes once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aimesh.bus import JOBS_STREAM, Bus, job_events_subject
from aimesh.config import JobsSettings
from aimesh.errors import AimeshError, BusUnavailable, JobNotFound
from aimesh.jobs import states
from aimesh.jobs._wire import Pulls
from aimesh.jobs.attempts import Slot, WorkerStats
from aimesh.jobs.client import REVISION_HEADER, job_subject
from aimesh.jobs.early import EarlyStarts
from aimesh.jobs.handlers import Handler
from aimesh.jobs.peers import LostWorkers
from aimesh.jobs.runner import Attempts, dead_letter_subject
from aimesh.jobs.states import Attempt
from aimesh.jobs.store import JobStore, decode_job
from aimesh.jobs.types import Job, JobError, check_kind
from aimesh.jobs.webhooks import WebhookSender

__all__ = ["Worker", "WorkerStats", "consumer_name", "dead_letter_subject"]

log = logging.getLogger("aimesh.jobs.worker")

# How long one pull waits for messages: also how long a stop waits for the pull to end.
_PULL_S = 1.0
# After the drain timeout, how long handed-back jobs get to write their record and nak.
_RELEASE_S = 5.0


def consumer_name(kind: str) -> str:
    """The durable consumer every worker of ``kind`` shares."""
    return f"jobs-{kind}"


def _now() -> datetime:
    return datetime.now(UTC)


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
        self._early = EarlyStarts(bus)
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._wake = asyncio.Event()
        """Set when the pull loop has something to do: slots freed, a request ended, a stop."""
        self._batch = max(1, self.concurrency // 4)
        self._pulls: Pulls | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0
        """Slots taken: jobs delivered whose handler has not returned yet."""
        self._store: JobStore | None = None
        self._attempts: Attempts | None = None
        """Runs the attempts (made once the store is open)."""
        self._webhooks = WebhookSender.of(settings)

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
        return len(self._attempts.running) if self._attempts is not None else 0

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (the worker drains, or has stopped)."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Pull and run jobs until :meth:`stop`, then drain and return."""
        try:
            self._store = await JobStore.open(self.bus)
            self._attempts = Attempts(
                self.bus,
                self._store,
                self.handler,
                settings=self.settings,
                worker_id=self.id,
                stats=self.stats,
                webhooks=self._webhooks,
            )
            pulls = await self._subscribe()
            cancels = await self._watch_cancels()
            peers = LostWorkers(self.bus, self._store, self.kind, self.id)
            await peers.start()
            self.ready.set()
            log.info(
                "worker %s runs jobs of kind %s, %d at a time", self.id, self.kind, self.concurrency
            )
            try:
                await self._pull(pulls)
            finally:
                await peers.stop()
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
            if self._attempts is not None:
                self._attempts.cancel(job_id)
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
        task = asyncio.create_task(self._handle(msg, Slot(self._free)))
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
        if self._attempts is not None:
            self._attempts.hand_back_all()
        if self._tasks:
            _done, late = await asyncio.wait(set(self._tasks), timeout=_RELEASE_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # -- one message --------------------------------------------------------------------

    async def _handle(self, msg: Msg, slot: Slot) -> None:
        try:
            await self._process(msg, slot)
        except (AimeshError, nats.errors.Error, TimeoutError) as exc:
            # Not acknowledged: JetStream delivers the message again after ack_wait.
            log.warning("job message %s left for redelivery: %s", _seq(msg), exc)
        except Exception:
            log.exception("unexpected error on job message %s; left for redelivery", _seq(msg))
        finally:
            slot.free()

    async def _process(self, msg: Msg, slot: Slot) -> None:
        assert self._store is not None and self._attempts is not None
        attempts = self._attempts
        meta = msg.metadata  # parsed from the reply subject: once
        seq: int = meta.sequence.stream
        try:
            copy = decode_job(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("job message %d is not a job (%s); terminated", seq, exc)
            await msg.term()
            return
        headers = msg.headers or {}
        revision = int(headers.get(REVISION_HEADER, "0"))
        if (
            attempts.early_starts
            and self._early.allow(meta, copy.id, headers)
            and states.on_delivery(copy, seq) == "start"
        ):
            # Start now, claim later (see aimesh.jobs.early and _claim_late).
            started, first = states.start(
                copy, worker=self.id, seq=seq, now=_now(), delivery=msg.reply
            )
            await attempts.run(
                msg, started, revision, first, slot, queued=copy, hand_back=self.stopping
            )
            return
        # Delivered before, yet the record is as it was queued: that delivery left no trace.
        vanished = copy if meta.num_delivered > 1 and revision else None
        try:
            known = (copy, revision) if revision else await self._store.get(copy.id)
            decision, job, revision, attempt = await self._claim(
                copy.id, seq, msg.reply, known, vanished
            )
        except JobNotFound:
            log.error("job %s has no record (expired?); its message is dropped", copy.id)
            await msg.term()
            return
        if decision in ("skip", "duplicate"):
            self.stats.skipped += 1
            await msg.ack()
        elif decision == "cancel":
            self.stats.cancelled += 1
            await attempts.ended(msg, job)
        elif decision == "exhausted":
            error = JobError(
                "attempts_exhausted",
                f"the worker of attempt {job.attempts} of {job.max_attempts} was lost",
            )
            await attempts.dead_letter(states.fail(job, error, _now()), error)
            job, revision = await self._store.change(
                job.id, lambda j: states.fail(j, error, _now()), known=(job, revision)
            )
            self.stats.failed += 1
            await attempts.ended(msg, job)
        else:
            assert attempt is not None
            await attempts.run(msg, job, revision, attempt, slot, hand_back=self.stopping)

    async def _claim(
        self, job_id: str, seq: int, reply: str, known: tuple[Job, int], vanished: Job | None
    ) -> tuple[states.Delivery, Job, int, Attempt | None]:
        """Decide what to do with the message, and start the attempt if that is the answer.

        ``vanished``: the record as the message was queued with, if it was delivered before:
        a record still equal to it says that delivery's worker was lost before its claim,
        which is entered as an attempt (see :func:`states.lost_unclaimed`).
        """
        assert self._store is not None
        decision: states.Delivery = "skip"
        attempt: Attempt | None = None

        def claim(job: Job) -> Job:
            nonlocal decision, attempt
            decision = states.on_delivery(job, seq)
            if decision == "start" and vanished is not None and job == vanished:
                job = states.lost_unclaimed(job, _now())
                log.warning("job %s: the worker of its last delivery was lost", job.id)
                decision = states.on_delivery(job, seq)
            if decision == "start":
                started, attempt = states.start(
                    job, worker=self.id, seq=seq, now=_now(), delivery=reply
                )
                return started
            if decision == "cancel":
                return states.cancel(job, _now())
            return job

        job, revision = await self._store.change(job_id, claim, known=known)
        return decision, job, revision, attempt


def _seq(msg: Msg) -> int:
    seq: int = msg.metadata.sequence.stream
    return seq

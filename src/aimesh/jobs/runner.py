"""One attempt of a job, from its start to its outcome in the record and its message's ack.

:class:`Attempts` is the half of a :class:`~aimesh.jobs.worker.Worker` that runs what the
other half (pulling, deciding what a delivery means, draining) starts: it calls the
handler, heartbeats while it runs, writes its progress, claims an attempt started early
(see :mod:`aimesh.jobs.early`), and concludes: the record's outcome as
:func:`~aimesh.jobs.attempts.outcome_of` says, then the ack (or a nak with a delay, or a
dead letter first). Every write expects the revision it read: an attempt that another
took over is *lost* (its writes fenced out), one whose queued record moved on before its
claim is *abandoned* (its message decided again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import Header

from aimesh.bus import Bus, JobState
from aimesh.config import JobsSettings
from aimesh.errors import AimeshError, BusUnavailable, DeadlineExceeded
from aimesh.jobs import states
from aimesh.jobs.attempts import Run, Slot, WorkerStats, outcome_of
from aimesh.jobs.handlers import Handler, JobContext, call_handler
from aimesh.jobs.states import Attempt, InvalidTransition, StaleAttempt
from aimesh.jobs.store import JobStore, RevisionMismatch
from aimesh.jobs.types import DeadLetter, Job, JobError
from aimesh.jobs.webhooks import WebhookSender

__all__ = ["Attempts", "dead_letter_subject"]

log = logging.getLogger("aimesh.jobs.worker")

_dead_letters = msgspec.json.Encoder()


def dead_letter_subject(kind: str) -> str:
    """Where jobs of ``kind`` that failed for good are published: ``aimesh.dlq.jobs.<kind>``."""
    return f"aimesh.dlq.jobs.{kind}"


def _now() -> datetime:
    return datetime.now(UTC)


class Attempts:
    """The attempts one worker runs, by job id while they run."""

    def __init__(
        self,
        bus: Bus,
        store: JobStore,
        handler: Handler,
        *,
        settings: JobsSettings,
        worker_id: str,
        stats: WorkerStats,
        webhooks: WebhookSender,
    ) -> None:
        self._bus = bus
        self._store = store
        self._handler = handler
        self._settings = settings
        self._worker_id = worker_id
        self._stats = stats
        self._webhooks = webhooks
        self._heartbeat_s = settings.ack_wait_s / 3
        # Claimed before the first heartbeat, which checks the claim.
        self._claim_after_s = min(settings.claim_after_s, self._heartbeat_s)
        self.running: dict[str, Run] = {}
        """The attempts running now, by job id."""

    @property
    def early_starts(self) -> bool:
        """Whether attempts may start before they are claimed (``claim_after_s`` > 0)."""
        return self._claim_after_s > 0

    def cancel(self, job_id: str) -> None:
        """Stop the attempt of ``job_id`` running here, if any (its job was cancelled)."""
        run = self.running.get(job_id)
        if run is not None:
            run.ctx._cancel()

    def hand_back_all(self) -> None:
        """Stop every running attempt, to hand its job back (not an attempt spent)."""
        for run in self.running.values():
            run.released = True
            run.ctx._cancel()  # a handler in a thread sees it (ctx.cancelled)
            if run.task is not None:
                run.task.cancel()

    async def ended(self, msg: Msg, job: Job) -> None:
        """Acknowledge the message of a job that ended, and call its webhook."""
        await msg.ack()
        self._webhooks.send(job)

    async def dead_letter(self, job: Job, reason: JobError) -> None:
        """Publish ``job``, failed for good for ``reason``, on its kind's dead-letter subject."""
        letter = DeadLetter(job=job, reason=reason, attempts=job.attempts, worker=self._worker_id)
        subject = dead_letter_subject(job.kind)
        headers = {Header.MSG_ID.value: job.id, "Aimesh-Reason": reason.code}
        try:
            await self._store.writes.publish(subject, _dead_letters.encode(letter), headers)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"dead letter of job {job.id} not stored: {exc}") from exc

    async def run(
        self,
        msg: Msg,
        job: Job,
        revision: int,
        attempt: Attempt,
        slot: Slot,
        *,
        queued: Job | None = None,
        hand_back: bool = False,
    ) -> None:
        """Run ``attempt`` of ``job`` (its record at ``revision``) to its outcome and ack.

        ``queued``: the record as it was queued, for an attempt started early (not claimed
        yet). ``hand_back``: the worker is stopping, so the attempt is handed back unrun.
        ``slot`` is freed once the handler returns, before the outcome is written.
        """
        timeout_s = job.timeout_s or self._settings.timeout_for(job.kind)
        ctx = JobContext(
            job, attempt.number, self._bus, timeout_s=timeout_s, on_fenced=self._stats.count_fenced
        )
        run = Run(msg, attempt, ctx, job, revision)
        run.queued = queued
        self.running[job.id] = run
        try:
            if hand_back:
                run.released = True  # claimed while the worker began to stop: hand it back
            else:
                run.last_flush = time.monotonic()
                run.task = asyncio.create_task(self._call(run.ctx))
                await self._supervise(run)
            slot.free()
            await self._conclude(run)
        finally:
            if self.running.get(job.id) is run:  # not a later attempt of the same job
                del self.running[job.id]
            if run.task is not None and not run.task.done():
                run.task.cancel()

    async def _call(self, ctx: JobContext) -> object:
        """The handler's result; at the deadline, the attempt fenced and its handler cancelled.

        A handler in a thread runs on after its task is cancelled: the fence (see
        :meth:`JobContext.commit`) keeps whatever it does afterwards from taking effect. A
        commit under way at the deadline is let finish, and the handler's outcome counts.
        The deadline is a timer on the loop, not a second task: a job's cost is its own.
        """
        if ctx.timeout_s is None:
            return await call_handler(self._handler, ctx)
        task = asyncio.current_task()
        assert task is not None  # _call runs as the attempt's task
        expired = False

        def at_deadline() -> None:
            nonlocal expired
            if ctx._trip():
                log.info(
                    "attempt %d of job %s reached its deadline during a commit; letting it end",
                    ctx.attempt, ctx.job.id,
                )  # fmt: skip
                return
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(ctx.timeout_s, at_deadline)
        try:
            result = await call_handler(self._handler, ctx)
        except asyncio.CancelledError:
            if not expired:  # stopped from outside (a cancel, the worker stopping)
                ctx._trip("was stopped")
                raise
            task.uncancel()
        finally:
            timer.cancel()
        if not expired:
            return result
        log.warning(
            "attempt %d of job %s ran past its timeout of %gs: stopped and fenced",
            ctx.attempt, ctx.job.id, ctx.timeout_s,
        )  # fmt: skip
        raise DeadlineExceeded(
            f"attempt {ctx.attempt} ran longer than the job's timeout of {ctx.timeout_s:g}s"
        )

    async def _supervise(self, run: Run) -> None:
        """Wait for the handler; meanwhile heartbeat, write progress, honour a cancel."""
        assert run.task is not None
        await asyncio.sleep(0)  # a handler with nothing to wait for ends here, at no cost
        interval = self._settings.progress_interval_s
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
        await run.msg.in_progress()
        job, revision = await self._store.get(run.job.id)
        if job.state != "running" or job.claims != run.attempt.claim:
            log.warning("job %s was taken over by %s; stopping attempt", job.id, job.worker)
            run.lost = True
        elif job.cancel_requested:
            run.ctx._cancel()
        run.job, run.revision = job, revision

    async def _write_progress(self, run: Run) -> None:
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
        assert run.queued is not None
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
        job, revision = await self._store.get(run.job.id)
        mine = (
            job.worker == self._worker_id and job.claims == run.attempt.claim and job.state == state
        )
        return (job, revision) if mine else None

    async def _succeed_unclaimed(self, run: Run, succeeded: Job) -> None:
        """Write an unclaimed attempt's success over the queued record: one write in all."""
        try:
            await self._store.update(succeeded, run.revision)
        except RevisionMismatch:
            if await self._written(run, "succeeded") is None:
                log.info("job %s changed while it ran unclaimed; its result is dropped", run.job.id)
                await run.msg.nak()  # decided again from the record
                return
        self._stats.succeeded += 1
        await run.msg.ack()
        self._webhooks.send(succeeded)

    async def _conclude(self, run: Run) -> None:
        if run.lost:
            return  # the attempt that took over owns the message now
        outcome = outcome_of(run, self._settings)
        if run.queued is not None:  # never claimed: the attempt ended within claim_after_s
            if outcome.counter == "succeeded":
                await self._succeed_unclaimed(run, outcome.change(run.job))
                return
            # A failure, a cancel or a hand-back is written the usual way, after its claim:
            # every delivery shows in the record's attempt log.
            await self._claim_late(run)
        if run.abandoned:
            await run.msg.nak()
            return
        if outcome.dead_letter is not None:
            # Before the record says failed: a crash in between leaves the job to be failed
            # again (same dead letter, deduplicated), never failed without its dead letter.
            await self.dead_letter(outcome.change(run.job), outcome.dead_letter)
        try:
            job, _ = await self._store.change(
                run.job.id, outcome.change, known=(run.job, run.revision)
            )
        except (StaleAttempt, InvalidTransition) as exc:
            log.warning("outcome of job %s not recorded: %s", run.job.id, exc)
            return
        setattr(self._stats, outcome.counter, getattr(self._stats, outcome.counter) + 1)
        if outcome.ack:
            await run.msg.ack()
            self._webhooks.send(job)
        else:
            await run.msg.nak(delay=outcome.nak_delay or None)

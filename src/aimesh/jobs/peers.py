"""A worker known dead hands its jobs back at once: its siblings watch discovery for it.

Every ``aimesh worker`` keeps a discovery entry (``worker.<kind>.<worker id>``); a worker
that dies stops heartbeating and its entry expires (a clean stop deletes it, after its jobs
were handed back). Without more, JetStream hands the dead worker's messages to another
worker only after ``ack_wait``. So each worker watches the entries of its own kind
(:class:`LostWorkers`): when one is gone and stays gone for a grace period (a live worker
puts its entry again within a heartbeat), it looks for the jobs that worker was running
and, for each, ends the attempt ``worker_lost`` in the record (:func:`states.lose_worker`,
under optimistic concurrency: of several watching workers, one writes) and *naks* the
job's message through the reply subject its attempt recorded (``Job.delivery``), so that
it is delivered again at once. Any worker of the kind may nak it, a new process too: the
reply subject names the kind's one durable consumer (``jobs-<kind>``, see
:func:`aimesh.jobs.worker.consumer_name`), which every worker of the kind pulls from and
which outlives them all, so the message is still pending on it whoever died.

The watch hears only the entries that go after it starts. A worker that starts when its
kind's dead worker is gone already (the only worker of a kind, killed and restarted by
``aimesh up``'s supervisor under a new id; or any worker started after the entry expired)
would hear nothing; so on starting, each worker also sweeps once: the running jobs of its
kind whose worker has no entry are checked the same way, after the same grace period.

One mechanism, owned by the workers: the jobs service need not run, and while a kind has
no worker at all nobody could run the job sooner anyway. An attempt its worker started
early and had not claimed yet (see :mod:`aimesh.jobs.early`) is in no record: it comes
back after ``ack_wait``, and is entered then (:func:`states.lost_unclaimed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from aimesh.bus import DISCOVERY_BUCKET, Bus
from aimesh.errors import AimeshError
from aimesh.jobs import states
from aimesh.jobs.store import JobStore
from aimesh.jobs.types import Job

__all__ = ["GRACE_S", "LostWorkers"]

log = logging.getLogger("aimesh.jobs.worker")

GRACE_S = 5.0
"""How long a worker's entry must stay gone before its jobs are handed back: more than a
discovery heartbeat (``serving.heartbeat_s``, 2 s by default)."""
_NAK = b"-NAK"
# Headers of a KV message that says its key is gone (a delete, a purge, an expiry marker).
_GONE = frozenset({"KV-Operation", "Nats-Marker-Reason"})
_LIST_AT_MOST = 100_000


def _now() -> datetime:
    return datetime.now(UTC)


class LostWorkers:
    """Hands back the running jobs of the workers of ``kind`` whose entry is gone.

    Those whose entry goes while it watches, and those already gone when it starts.
    """

    def __init__(
        self, bus: Bus, store: JobStore, kind: str, worker_id: str, *, grace_s: float = GRACE_S
    ) -> None:
        self._bus = bus
        self._store = store
        self._kind = kind
        self._worker_id = worker_id
        self._grace_s = grace_s
        self._sub: Subscription | None = None
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._sweeping: asyncio.Task[None] | None = None
        self.handed_back = 0
        """Jobs handed back so far because their worker was gone."""

    async def start(self) -> None:
        """Watch the entries of the workers of this kind from now on, and sweep once.

        The sweep runs in the background: the worker need not wait for it to pull.
        """
        try:
            self._sub = await self._bus.js.subscribe(
                f"$KV.{DISCOVERY_BUCKET}.worker.{self._kind}.*",
                stream=f"KV_{DISCOVERY_BUCKET}",
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                cb=self._heard,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # Not fatal: the dead worker's jobs then come back after ack_wait.
            log.warning("cannot watch the workers of kind %s: %s", self._kind, exc)
        # After the watch is on: an entry the sweep finds alive is heard when it goes.
        self._sweeping = asyncio.create_task(self._sweep(), name=f"lost-workers-{self._kind}")

    async def stop(self) -> None:
        """Stop watching; the sweep and checks under way are cancelled."""
        tasks = [*self._checks.values(), *([self._sweeping] if self._sweeping else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._checks.clear()
        self._sweeping = None
        if self._sub is not None and not self._bus.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._sub.unsubscribe()
        self._sub = None

    async def _heard(self, msg: Msg) -> None:
        gone = not msg.data or bool(msg.headers and _GONE.intersection(msg.headers))
        if gone:
            self._suspect(msg.subject.rsplit(".", 1)[-1])

    async def _sweep(self) -> None:
        """Suspect the workers of the running jobs of this kind that have no entry now."""
        try:
            running = await self._store.list(kind=self._kind, state="running", limit=_LIST_AT_MOST)
            for worker in sorted({job.worker for job in running if job.worker}):
                if worker != self._worker_id and not await self._alive(worker):
                    self._suspect(worker)
        except (AimeshError, nats.errors.Error, TimeoutError) as exc:
            log.warning("running jobs of kind %s not swept (ack_wait will): %s", self._kind, exc)

    def _suspect(self, worker: str) -> None:
        """Check ``worker`` after the grace period, unless it is this one or checked already."""
        if worker == self._worker_id or worker in self._checks:
            return
        task = asyncio.create_task(self._check(worker), name=f"lost-worker-{worker}")
        self._checks[worker] = task
        task.add_done_callback(lambda _t: self._checks.pop(worker, None))

    async def _check(self, worker: str) -> None:
        await asyncio.sleep(self._grace_s)
        try:
            if await self._alive(worker):
                return
            running = await self._store.list(kind=self._kind, state="running", limit=_LIST_AT_MOST)
            for job in running:
                if job.worker == worker:
                    await self._hand_back(job, worker)
        except (AimeshError, nats.errors.Error, TimeoutError) as exc:
            log.warning("jobs of lost worker %s not handed back (ack_wait will): %s", worker, exc)

    async def _alive(self, worker: str) -> bool:
        kv = await self._bus.js.key_value(DISCOVERY_BUCKET)
        try:
            entry = await kv.get(f"worker.{self._kind}.{worker}")
        except nats.js.errors.KeyNotFoundError:
            return False
        return bool(entry.value)

    async def _hand_back(self, job: Job, worker: str) -> None:
        delivery: str | None = None

        def lose(current: Job) -> Job:
            nonlocal delivery
            changed = states.lose_worker(current, worker, _now())
            delivery = current.delivery if changed is not current else None
            return changed

        await self._store.change(job.id, lose)
        if delivery is None:
            return  # another watcher (or the job itself) moved it on
        log.warning("worker %s is gone: job %s handed back for its next attempt", worker, job.id)
        self.handed_back += 1
        await self._bus.nc.publish(delivery, _NAK)

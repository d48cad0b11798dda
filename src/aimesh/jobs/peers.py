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
it is delivered again at once.

One mechanism, owned by the workers: the jobs service need not run, and a kind with no
other worker has nobody to run the job sooner anyway. An attempt its worker started early
and had not claimed yet (see :mod:`aimesh.jobs.early`) is in no record: it comes back after
``ack_wait``, and is entered then (:func:`states.lost_unclaimed`).
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
    """Hands back the running jobs of the workers of ``kind`` whose entry is gone."""

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
        self.handed_back = 0
        """Jobs handed back so far because their worker was gone."""

    async def start(self) -> None:
        """Watch the entries of the workers of this kind (from now on)."""
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

    async def stop(self) -> None:
        """Stop watching; checks under way are cancelled."""
        for task in self._checks.values():
            task.cancel()
        if self._checks:
            await asyncio.gather(*self._checks.values(), return_exceptions=True)
        self._checks.clear()
        if self._sub is not None and not self._bus.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._sub.unsubscribe()
        self._sub = None

    async def _heard(self, msg: Msg) -> None:
        worker = msg.subject.rsplit(".", 1)[-1]
        gone = not msg.data or bool(msg.headers and _GONE.intersection(msg.headers))
        if not gone or worker == self._worker_id or worker in self._checks:
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

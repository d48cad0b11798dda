"""A job's events are the changes of its record: nothing is published to tell them.

Every change of a job is a write of its record in the jobs KV bucket, and a KV write is
a message on the bucket's stream. Watching the record's key (:meth:`JobStore.watch`)
therefore hears each change as it is stored, with its revision, at no cost to the writers:
a job used to publish one event per change beside its record, which cost the bus about a
third of a no-op job's CPU. :func:`change_between` names what happened between two
revisions, and :func:`job_event` turns a revision into the :class:`JobEvent` that SSE
clients and ``JobClient.watch`` see.

One change is also *told*: a cancel request, published on
``aimesh.events.jobs.<id>.cancel_requested`` for the workers (they listen to that subject,
not to every record): the one running the job stops it, and any other will not start it
early (see :mod:`aimesh.jobs.early`). A worker that misses it still sees the request on
its next heartbeat, or at its claim.
"""

from __future__ import annotations

import logging

import nats.errors

from aimesh.bus import Bus, JobChange, JobEvent, encode_event
from aimesh.jobs.types import Job

__all__ = ["change_between", "job_event", "notify_cancel"]

log = logging.getLogger("aimesh.jobs")


def change_between(before: Job | None, after: Job) -> JobChange:
    """What changed from ``before`` (None: nothing seen yet) to ``after``, as an event says.

    A new state is that state's name, but that a running job put back in the queue is
    ``retrying`` when its attempt failed (the record keeps the error) and ``queued`` when
    it was handed back. A running job that stays running changes ``cancel_requested`` when
    the request appears, ``running`` when another attempt took over, else ``progress``.
    """
    if before is None or before.state != "running":
        return after.state
    if after.state == "queued":
        return "retrying" if after.attempts == before.attempts else "queued"
    if after.state != "running":
        return after.state
    if after.cancel_requested and not before.cancel_requested:
        return "cancel_requested"
    if after.claims != before.claims:
        return "running"
    return "progress"


def job_event(job: Job, revision: int, change: JobChange | None = None) -> JobEvent:
    """The event of ``job`` as written at ``revision`` (``change``: its state by default)."""
    return JobEvent(
        id=f"{job.id}-{revision}",  # one event per revision
        at=job.updated,
        job_id=job.id,
        kind=job.kind,
        change=change or job.state,
        state=job.state,
        revision=revision,
        attempt=job.attempts,
        progress=job.progress,
        message=job.progress_message,
        error_code=job.error.code if job.error else None,
        error_message=job.error.message if job.error else None,
    )


async def notify_cancel(bus: Bus, job: Job, revision: int) -> None:
    """Tell the worker running ``job`` that a cancel was asked for (log if the bus refuses)."""
    event = job_event(job, revision, "cancel_requested")
    try:
        await bus.nc.publish(event.subject(), encode_event(event))
    except nats.errors.Error as exc:
        log.warning("cancel request of job %s not published: %s", job.id, exc)

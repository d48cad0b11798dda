"""A job's changes as :class:`JobEvent` s on ``aimesh.events.jobs.<id>.<change>``.

The record in the KV bucket is the truth; events tell watchers (SSE clients, dashboards,
workers waiting for a cancel) that it changed. So events are published without waiting
for JetStream's ack (the ``AIMESH_EVENTS`` stream stores them all the same): a job's
changes cost one round trip each, not two. An event lost with the bus loses no state,
and watchers read the record again when they hear nothing for a while (see
:meth:`JobClient.watch`).

Nor do they carry a ``Nats-Msg-Id`` for the stream to deduplicate them by: each revision
of a record is written by one writer, who publishes its event once and never again (a
lost event is not sent twice), and readers skip the revisions they have seen. The header
cost the bus and the clients about a fourteenth of a no-op job's CPU. An event's ``id``
(``<job id>-<revision>``) still names it uniquely.
"""

from __future__ import annotations

import logging

import nats.errors

from aimesh.bus import Bus, JobChange, JobEvent, encode_event
from aimesh.jobs.types import Job

__all__ = ["emit", "job_event"]

log = logging.getLogger("aimesh.jobs")


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


async def emit(bus: Bus, job: Job, revision: int, change: JobChange | None = None) -> None:
    """Publish the event of ``job`` at ``revision``; log (not raise) when the bus refuses."""
    event = job_event(job, revision, change)
    try:
        await bus.nc.publish(event.subject(), encode_event(event))
    except nats.errors.Error as exc:
        log.warning("event of job %s (revision %d) not published: %s", job.id, revision, exc)

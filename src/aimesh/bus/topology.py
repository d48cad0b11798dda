"""The streams and KV buckets the platform needs, declared once, created idempotently.

:func:`declare_topology` creates whatever is missing. One that exists with the same
configuration is left alone, so every process may call it at start, even many at once.
One that exists with other limits (an older release's, or other settings') is updated in
place; one that exists with a configuration JetStream cannot change in place (storage,
retention) is never dropped behind anyone's back (it may hold data): that raises
:class:`Conflict`.

Everything is bounded. Sizes come from the connection's settings (``bus.*_max_bytes``,
:attr:`Bus.limits`); what happens when a stream is full is its discard policy:

- ``AIMESH_EVENTS`` and ``AIMESH_JOBS_DLQ`` (history): the oldest messages are dropped.
- ``AIMESH_JOBS`` (the work queue): new jobs are refused, never old ones dropped; the
  submitter gets :class:`QueueFull` (see :func:`storage_full`).
- KV buckets (JetStream's rule for every bucket): new writes are refused when full.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import nats.errors
import nats.js.errors
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from aimesh.bus.connection import Bus
from aimesh.config import BusSettings
from aimesh.errors import BusUnavailable, Conflict

__all__ = [
    "BUCKETS",
    "DISCOVERY_BUCKET",
    "DLQ_STREAM",
    "DLQ_SUBJECTS",
    "EVENTS_STREAM",
    "EVENTS_SUBJECTS",
    "EVENTS_SUBJECT_PREFIX",
    "JOBS_BUCKET",
    "JOBS_STREAM",
    "JOBS_SUBJECTS",
    "JOB_DATA_BUCKET",
    "JOB_DATA_TTL_S",
    "LEASES_BUCKET",
    "LEASE_TTL_S",
    "STREAMS",
    "BucketSpec",
    "StreamSpec",
    "buckets",
    "declare_topology",
    "storage_full",
    "streams",
]

EVENTS_STREAM = "AIMESH_EVENTS"
EVENTS_SUBJECT_PREFIX = "aimesh.events"
EVENTS_SUBJECTS = f"{EVENTS_SUBJECT_PREFIX}.>"
JOBS_STREAM = "AIMESH_JOBS"
JOBS_SUBJECTS = "aimesh.jobs.>"
DLQ_STREAM = "AIMESH_JOBS_DLQ"
DLQ_SUBJECTS = "aimesh.dlq.>"
DISCOVERY_BUCKET = "aimesh_discovery"
LEASES_BUCKET = "aimesh_leases"
LEASE_TTL_S = 15.0
"""A lease its holder stops renewing (it died) is gone this long after its last renewal."""
JOBS_BUCKET = "aimesh_jobs"
JOB_DATA_BUCKET = "aimesh_job_data"
JOB_DATA_TTL_S = 24 * 3600.0
"""How long a job's input and result blobs are kept (e.g. an async inference's answer)."""

_DAY_S = 24 * 3600.0
_MIB = 1024**2
# JetStream's error code for "stream name already in use with a different configuration".
_STREAM_EXISTS_DIFFERENTLY = 10058
# JetStream's error codes for a write refused because a stream (or bucket) is full: "maximum
# messages exceeded", "maximum bytes exceeded", and a store out of resources.
_STREAM_FULL_CODES = frozenset({10077, 10047, 10023})


log = logging.getLogger("aimesh.bus.topology")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream the platform needs."""

    name: str
    subjects: tuple[str, ...]
    description: str
    retention: Literal["limits", "workqueue"] = "limits"
    storage: Literal["file", "memory"] = "file"
    max_age_s: float | None = None
    """Messages older than this are removed; ``None`` keeps them until other limits hit."""
    max_bytes: int = 1024 * _MIB
    """The stream's size limit; what happens beyond it is ``discard``."""
    max_msgs: int | None = None
    """The most messages it holds; ``None``: only ``max_bytes`` bounds it."""
    discard: Literal["old", "new"] = "old"
    """When full: drop the oldest messages (``old``) or refuse new ones (``new``)."""
    duplicate_window_s: float = 120.0
    """Publishes with a ``Nats-Msg-Id`` already seen within this window are dropped."""

    def to_config(self) -> StreamConfig:
        """The nats-py configuration that creates this stream."""
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs if self.max_msgs is not None else -1,
            discard=DiscardPolicy(self.discard),
            duplicate_window=self.duplicate_window_s,
        )


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A JetStream key-value bucket the platform needs."""

    name: str
    description: str
    history: int = 1
    storage: Literal["file", "memory"] = "file"
    ttl_s: float | None = None
    """A key not written for this long disappears; ``None`` keeps keys forever."""
    expiry_markers: bool = False
    """Leave a delete marker when a key expires, so that watchers see it go."""
    max_bytes: int = 64 * _MIB
    """The bucket's size limit; beyond it new writes are refused (JetStream's rule for KV)."""

    def to_config(self) -> KeyValueConfig:
        """The nats-py configuration that creates this bucket."""
        return KeyValueConfig(
            bucket=self.name,
            description=self.description,
            history=self.history,
            storage=StorageType(self.storage),
            ttl=self.ttl_s,
            max_bytes=self.max_bytes,
            limit_marker_ttl=self.ttl_s if self.expiry_markers else None,
        )


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        name=EVENTS_STREAM,
        subjects=(EVENTS_SUBJECTS,),
        description="What changed in the platform (registry, jobs, rollouts), kept a week; "
        "when full, the oldest go first.",
        max_age_s=7 * _DAY_S,
        discard="old",
    ),
    StreamSpec(
        name=JOBS_STREAM,
        subjects=(JOBS_SUBJECTS,),
        description="Work to do; each message is removed once a worker acknowledges it. "
        "When full, new jobs are refused.",
        retention="workqueue",
        discard="new",
    ),
    StreamSpec(
        name=DLQ_STREAM,
        subjects=(DLQ_SUBJECTS,),
        description="Jobs that failed their last attempt, kept for inspection and replay; "
        "when full, the oldest go first.",
        max_age_s=30 * _DAY_S,
        max_bytes=256 * _MIB,
        discard="old",
    ),
)

"""The streams with their default limits (:func:`streams` applies a home's settings)."""

BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec(
        name=DISCOVERY_BUCKET,
        description="Live service instances; each keeps its key alive with heartbeats.",
        # Instances are facts about processes running now: none survive a bus restart.
        storage="memory",
        # Three missed heartbeats (every 2 s by default) and a crashed instance is gone.
        ttl_s=6.0,
        expiry_markers=True,
        max_bytes=64 * _MIB,
    ),
    BucketSpec(
        name=LEASES_BUCKET,
        description="Exclusive leases: one holder per key (a lake sink), renewed while it lives.",
        # Like instances, holders are processes running now: none survive a bus restart.
        storage="memory",
        ttl_s=LEASE_TTL_S,
        max_bytes=16 * _MIB,
    ),
    BucketSpec(
        name=JOBS_BUCKET,
        description="The state record of each asynchronous job.",
        # A few past states, to see how a stuck job got where it is.
        history=5,
        # A record nobody updated for a week belongs to a job long finished or abandoned.
        ttl_s=7 * _DAY_S,
        max_bytes=256 * _MIB,
    ),
    BucketSpec(
        name=JOB_DATA_BUCKET,
        description="Inputs and results of jobs too large for their record (async inference "
        "requests and answers), kept a day.",
        ttl_s=JOB_DATA_TTL_S,
        max_bytes=1024 * _MIB,
    ),
)
"""The buckets with their default limits (:func:`buckets` applies a home's settings)."""


def streams(limits: BusSettings) -> tuple[StreamSpec, ...]:
    """:data:`STREAMS` with the sizes of ``limits``."""
    sized = []
    for spec in STREAMS:
        if spec.name == EVENTS_STREAM:
            spec = dataclasses.replace(spec, max_bytes=limits.events_max_bytes)
        elif spec.name == JOBS_STREAM:
            spec = dataclasses.replace(
                spec, max_bytes=limits.jobs_max_bytes, max_msgs=limits.jobs_max_msgs
            )
        elif spec.name == DLQ_STREAM:
            spec = dataclasses.replace(spec, max_bytes=limits.dlq_max_bytes)
        sized.append(spec)
    return tuple(sized)


def buckets(limits: BusSettings) -> tuple[BucketSpec, ...]:
    """:data:`BUCKETS` with the sizes of ``limits``."""
    sizes = {
        JOBS_BUCKET: limits.job_records_max_bytes,
        JOB_DATA_BUCKET: limits.job_data_max_bytes,
    }
    return tuple(
        dataclasses.replace(b, max_bytes=sizes[b.name]) if b.name in sizes else b for b in BUCKETS
    )


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` is JetStream refusing a write because the stream or bucket is full."""
    if not isinstance(exc, nats.js.errors.APIError):
        return False
    if exc.err_code in _STREAM_FULL_CODES:
        return True
    text = (exc.description or "").lower()
    return "maximum" in text and "exceeded" in text


async def declare_topology(bus: Bus) -> None:
    """Create the streams and buckets of :data:`STREAMS` and :data:`BUCKETS` that are missing.

    Their sizes are those of the connection's settings (:attr:`Bus.limits`); an existing one
    with other limits is brought to them in place.
    """
    for stream in streams(bus.limits):
        await _declare(bus, stream.name, stream)
    for bucket in buckets(bus.limits):
        await _declare(bus, f"KV bucket {bucket.name}", bucket)


async def _declare(bus: Bus, what: str, spec: StreamSpec | BucketSpec) -> None:
    try:
        if isinstance(spec, StreamSpec):
            await bus.js.add_stream(spec.to_config())
        else:
            await bus.js.create_key_value(spec.to_config())
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS_DIFFERENTLY:
            raise BusUnavailable(f"the bus refused to create {what}: {exc.description}") from exc
        await _update(bus, what, spec, exc)
    except nats.js.errors.ServiceUnavailableError as exc:
        raise BusUnavailable(
            f"the bus at {bus.url} has no JetStream; start nats-server with -js"
        ) from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise BusUnavailable(f"could not create {what} on the bus at {bus.url}: {exc}") from exc


async def _update(bus: Bus, what: str, spec: StreamSpec | BucketSpec, cause: Exception) -> None:
    """Bring an existing stream or bucket to ``spec`` where JetStream allows it in place.

    Limits (sizes, discard policy, ages, TTLs, history, description, duplicate window) change
    in place, so a new aimesh release (or new settings) can tune them on a running bus. What
    JetStream cannot change (storage, retention) is refused with :class:`Conflict`, never
    dropped and recreated: it holds data.
    """
    try:
        if isinstance(spec, StreamSpec):
            await bus.js.update_stream(spec.to_config())
            return
        info = await bus.js.stream_info(f"KV_{spec.name}")
        config = info.config
        config.description = spec.description
        config.storage = StorageType(spec.storage)  # JetStream refuses this change: a Conflict
        config.max_age = spec.ttl_s or 0
        config.max_msgs_per_subject = spec.history
        config.max_bytes = spec.max_bytes
        config.duplicate_window = min(spec.ttl_s or 120.0, 120.0)
        config.subject_delete_marker_ttl = spec.ttl_s if spec.expiry_markers else None
        await bus.js.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise Conflict(
            f"{what} exists on the bus with a configuration that cannot be changed in place "
            f"({exc.description}). Remove it (for the embedded bus: `aimesh bus stop`, then "
            "delete HOME/bus/jetstream) and start again",
            name=spec.name,
        ) from cause
    log.info("updated %s on the bus to the declared limits", what)

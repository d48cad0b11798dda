"""Typed events on the bus: msgspec structs, each with its own subject, stored durably.

Every event family subclasses :class:`Event` with a tag (the ``"type"`` field on the wire)
and a :meth:`Event.subject`; :func:`publish_event` and :func:`subscribe_events` then work for
it unchanged. Events are stored in the ``AIMESH_EVENTS`` stream, deduplicated by their
``id`` within the stream's duplicate window.

Subscribers read through an ephemeral *ordered* JetStream consumer rather than a core NATS
subscription: after a disconnect it resumes at the next stream sequence instead of losing
what was published meanwhile, it can replay the stream's history (``deliver_new_only=False``),
and the server deletes it by itself when the subscriber goes away. A subscriber that must
not miss an event across its own restarts wants a durable consumer instead (not here).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, overload

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, Header

from aimesh.bus.connection import Bus
from aimesh.bus.topology import EVENTS_SUBJECT_PREFIX
from aimesh.errors import BusUnavailable

__all__ = [
    "EVENT_KIND",
    "JOB_SUBJECTS",
    "KEY_SUBJECTS",
    "REGISTRY_SUBJECTS",
    "Event",
    "EventStream",
    "JobChange",
    "JobEvent",
    "JobState",
    "PublishAck",
    "RegistryEvent",
    "decode_event",
    "encode_event",
    "job_events_subject",
    "publish_event",
    "subscribe_events",
]

_log = logging.getLogger(__name__)

REGISTRY_SUBJECTS = f"{EVENTS_SUBJECT_PREFIX}.registry.>"
JOB_SUBJECTS = f"{EVENTS_SUBJECT_PREFIX}.jobs.>"
KEY_SUBJECTS = f"{EVENTS_SUBJECT_PREFIX}.registry.key.>"
"""Where the registry says an API key was created or revoked."""
# How often the server shows an idle subscriber it is alive. nats-py rebuilds an ordered
# consumer after two missed beats, so this bounds the gap after a bus restart (~3 s here,
# ~20 s with nats-py's default of 5 s) for the price of one tiny message a second.
_HEARTBEAT_S = 1.0
# Characters that would split, or act as wildcards in, a subject token.
_NOT_IN_TOKEN = re.compile(r"[\s.*>]")
EVENT_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""A registry event's kind: the registry's own (``model``...), or a record kind's name."""

Scalar = str | int | float | bool | None


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The base of every event family: a unique ``id`` and the moment ``at`` it happened.

    ``id`` is the JetStream message id, so publishing the same event twice (a retry after a
    lost ack) stores it once. ``at`` must carry a time zone.
    """

    id: str = msgspec.field(default_factory=_new_id)
    at: datetime = msgspec.field(default_factory=_now)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("an event needs a non-empty id")
        if self.at.tzinfo is None:
            raise ValueError("an event's time must carry a time zone (use datetime.now(UTC))")

    def subject(self) -> str:
        """The subject the event is published on."""
        raise NotImplementedError(f"{type(self).__name__} does not say where it is published")


class RegistryEvent(Event, frozen=True, kw_only=True, tag="registry"):
    """A change in the registry: a model, a version, an alias, an API key or a record of a
    registered kind (``aimesh.registry.kinds``) was touched.

    ``kind`` is ``model``, ``version``, ``alias``, ``key`` or a record kind's name (any
    lowercase subject token is accepted, so a process hears of kinds it does not define).
    For an API key, ``model`` is the key's name; the event never carries the key or its
    digest. For a record, ``model`` is the record's name and ``data`` holds its
    ``revision``.
    """

    kind: str
    action: Literal["created", "moved", "deleted", "archived", "updated", "revoked"]
    model: str
    actor: str
    version: int | None = None
    alias: str | None = None
    data: dict[str, Scalar] = msgspec.field(default_factory=dict)
    """A small extra payload; anything large belongs in the registry, fetched by name."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not EVENT_KIND.fullmatch(self.kind):
            raise ValueError(f"registry event kind {self.kind!r} is not a lowercase token")
        if not self.model or _NOT_IN_TOKEN.search(self.model):
            raise ValueError(f"model name {self.model!r} cannot be a subject token")

    def subject(self) -> str:
        """``aimesh.events.registry.<kind>.<action>.<model>``."""
        return f"{EVENTS_SUBJECT_PREFIX}.registry.{self.kind}.{self.action}.{self.model}"


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""Where an asynchronous job is; the last three are terminal."""

JobChange = Literal[
    "queued", "running", "progress", "retrying", "cancel_requested", "succeeded", "failed",
    "cancelled",
]  # fmt: skip
"""What happened to a job: it entered a state, made progress, will retry, was asked to stop."""


class JobEvent(Event, frozen=True, kw_only=True, tag="job"):
    """A change of one asynchronous job: one revision of its record in the jobs KV bucket.

    Watchers hear a job's changes by watching its record (see :mod:`aimesh.jobs.events`);
    only a cancel request is also published, on ``aimesh.events.jobs.<job_id>.<change>``,
    for the worker running the job. ``revision`` is the record's revision, so a reader
    that holds the record knows which events are news to it.
    """

    job_id: str
    kind: str
    change: JobChange
    state: JobState
    revision: int
    attempt: int = 0
    progress: float | None = None
    message: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.job_id or _NOT_IN_TOKEN.search(self.job_id):
            raise ValueError(f"job id {self.job_id!r} cannot be a subject token")

    def subject(self) -> str:
        """``aimesh.events.jobs.<job_id>.<change>``."""
        return job_events_subject(self.job_id, self.change)


def job_events_subject(job_id: str = "*", change: str = "*") -> str:
    """The subject of one job's events of one change; wildcards (``*``) by default."""
    return f"{EVENTS_SUBJECT_PREFIX}.jobs.{job_id}.{change}"


E = TypeVar("E", bound=Event)

_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """The event as JSON bytes, with its family's tag in ``"type"``."""
    return _encoder.encode(event)


def decode_event(data: bytes, event_type: type[E]) -> E:
    """Decode JSON bytes into ``event_type``.

    Raises ``msgspec.DecodeError`` (not JSON) or ``msgspec.ValidationError`` (not that event).
    """
    return msgspec.json.decode(data, type=event_type)


class PublishAck(msgspec.Struct, frozen=True):
    """Where JetStream stored an event; ``duplicate`` if its id was already stored."""

    stream: str
    seq: int
    duplicate: bool


async def publish_event(bus: Bus, event: Event, *, timeout: float | None = None) -> PublishAck:
    """Publish ``event`` and wait until JetStream has stored it.

    Raises :class:`BusUnavailable` when no stream takes its subject or no ack comes back
    in ``timeout`` seconds (the connection's JetStream timeout by default). Safe to retry:
    the event's id makes a second copy a duplicate.
    """
    subject = event.subject()
    try:
        ack = await bus.js.publish(
            subject, encode_event(event), timeout=timeout, headers={Header.MSG_ID: event.id}
        )
    except nats.js.errors.NoStreamResponseError as exc:
        raise BusUnavailable(
            f"no stream on the bus at {bus.url} stores {subject}; declare the topology first"
        ) from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise BusUnavailable(
            f"event {event.id} on {subject} was not stored by the bus at {bus.url}: {exc}"
        ) from exc
    return PublishAck(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))


class EventStream(Generic[E]):
    """The decoded events of one subscription, as an async iterator.

    Iteration ends when the stream or its connection is closed. A message that does not
    decode as ``E`` is logged and skipped. Close it (or use ``async with``) when done.
    """

    def __init__(
        self,
        bus: Bus,
        sub: JetStreamContext.PushSubscription,
        event_type: type[E],
        subject: str,
    ) -> None:
        self.subject = subject
        self._bus = bus
        self._sub = sub
        self._messages = sub.messages
        self._decoder = msgspec.json.Decoder(event_type)
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> E:
        while True:
            msg: Msg = await self._messages.__anext__()
            try:
                return self._decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                _log.warning("skipping a malformed event on %s: %s", msg.subject, exc)

    async def close(self) -> None:
        """Stop the subscription; the server then drops its ephemeral consumer."""
        if self._closed:
            return
        self._closed = True
        if not self._bus.nc.is_closed:
            await self._sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@overload
async def subscribe_events(
    bus: Bus, subject: str = ..., *, deliver_new_only: bool = ...
) -> EventStream[RegistryEvent]: ...
@overload
async def subscribe_events(
    bus: Bus, subject: str = ..., *, event_type: type[E], deliver_new_only: bool = ...
) -> EventStream[E]: ...
async def subscribe_events(
    bus: Bus,
    subject: str = REGISTRY_SUBJECTS,
    *,
    event_type: type[Event] = RegistryEvent,
    deliver_new_only: bool = True,
) -> EventStream[Any]:
    """Subscribe to the events on ``subject`` (wildcards allowed), decoded as ``event_type``.

    With ``deliver_new_only`` the stream yields events published after this call returns;
    without it, every stored event on the subject first (up to a week back). The
    subscription is in place when this returns, so nothing published afterwards is missed.
    """
    policy = DeliverPolicy.NEW if deliver_new_only else DeliverPolicy.ALL
    try:
        sub = await bus.js.subscribe(
            subject, ordered_consumer=True, deliver_policy=policy, idle_heartbeat=_HEARTBEAT_S
        )
    except nats.js.errors.NotFoundError as exc:
        raise BusUnavailable(
            f"no stream on the bus at {bus.url} stores {subject}; declare the topology first"
        ) from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise BusUnavailable(
            f"cannot subscribe to {subject} on the bus at {bus.url}: {exc}"
        ) from exc
    return EventStream(bus, sub, event_type, subject)

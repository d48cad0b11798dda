"""Job records in the jobs KV bucket, changed only under optimistic concurrency.

Each record lives under ``job.<id>``; every change reads the record with its revision,
applies a pure function of :mod:`aimesh.jobs.states`, and writes back only if the revision
is still the same (``update(key, value, last=revision)``), trying again on a conflict. So a
cancel request and a worker's progress never overwrite each other, and two workers never
both start or finish one attempt.

A record's changes are heard by watching its key (:meth:`JobStore.watch`): each write is
a message on the bucket's stream, so nothing else needs publishing to tell them.

Idempotency keys live under ``idem.<sha256 of the key>`` -> :class:`Binding` (the job id
and the digest of the request it was made for), written with ``create`` (which fails when
the key exists): a key stays bound to its first job for as long as the bucket keeps it,
well beyond the job stream's duplicate window.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncGenerator, Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from aimesh.bus import JOBS_BUCKET, Bus, JobState, storage_full
from aimesh.errors import BusUnavailable, Conflict, JobNotFound, QueueFull
from aimesh.jobs._wire import StoredWrites, WrongRevision
from aimesh.jobs.types import Job

__all__ = ["Binding", "JobStore", "RevisionMismatch"]

log = logging.getLogger("aimesh.jobs")

_JOB = "job."
_IDEM = "idem."
# Changes of one record race only with a cancel request or a redelivery: a handful of
# retries settle any real contention.
_MAX_TRIES = 20
_WRITE_TIMEOUT_S = 5.0
# How often the server shows an idle watch it is alive (nats-py rebuilds the watch's
# consumer after two missed beats, e.g. after a bus restart).
_WATCH_HEARTBEAT_S = 1.0
# Headers of a KV message that says its key is gone: a delete or purge, or (nats-server
# 2.11+) a marker the server leaves when the key expires.
_GONE = frozenset({"KV-Operation", "Nats-Marker-Reason"})

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)

Versioned = tuple[Job, int]
"""A record and the KV revision it was read at (or written as)."""


class Binding(msgspec.Struct, frozen=True):
    """What an idempotency key is bound to: a job, and the digest of its request."""

    job: str
    digest: str | None = None
    """``None`` for a binding stored before digests were (its request is not compared)."""


_binding = msgspec.json.Decoder(Binding)


def _decode_binding(value: bytes) -> Binding:
    if value.startswith(b"{"):
        return _binding.decode(value)
    return Binding(value.decode())  # a bare job id: stored by an older version


class RevisionMismatch(Exception):
    """Raised when a record changed since it was read (the caller reads it again)."""


def _bus_error(what: str, exc: Exception) -> BusUnavailable | QueueFull:
    if storage_full(exc):
        return QueueFull(
            f"could not {what}: the jobs bucket is full (bus.job_records_max_bytes); retry later"
        )
    return BusUnavailable(f"could not {what} in the jobs bucket: {exc or type(exc).__name__}")


def encode_job(job: Job) -> bytes:
    """A record as JSON bytes."""
    return _encoder.encode(job)


def decode_job(data: bytes) -> Job:
    """A record from JSON bytes (raises ``msgspec.DecodeError`` / ``ValidationError``)."""
    return _decoder.decode(data)


class JobStore:
    """The job records of one bus."""

    def __init__(self, bus: Bus, kv: KeyValue, writes: StoredWrites) -> None:
        self._bus = bus
        self._kv = kv
        self.writes = writes
        """Stored writes on the store's connection (also used to publish job messages)."""

    @classmethod
    async def open(cls, bus: Bus) -> JobStore:
        """The store on ``bus`` (declare the topology first); :meth:`close` it when done."""
        try:
            kv = await bus.js.key_value(JOBS_BUCKET)
            writes = StoredWrites(bus, timeout=_WRITE_TIMEOUT_S)
            await writes.start()
        except (nats.js.errors.BucketNotFoundError, nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(
                f"no {JOBS_BUCKET} bucket on the bus at {bus.url}; declare the topology first"
            ) from exc
        return cls(bus, kv, writes)

    async def close(self) -> None:
        """Stop waiting for acks."""
        await self.writes.close()

    async def create(self, job: Job) -> int:
        """Store a new record; returns its revision."""
        try:
            return await self._write(job, 0)
        except RevisionMismatch as exc:
            raise Conflict(f"job {job.id} exists already", job_id=job.id) from exc

    async def get(self, job_id: str) -> Versioned:
        """The record of ``job_id`` and its revision; :class:`JobNotFound` if there is none."""
        try:
            entry = await self._kv.get(_JOB + job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError) as exc:
            raise JobNotFound(job_id) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error(f"read job {job_id}", exc) from exc
        if not entry.value or entry.revision is None:
            raise JobNotFound(job_id)
        return decode_job(entry.value), entry.revision

    async def update(self, job: Job, revision: int) -> int:
        """Write ``job`` if its record is still at ``revision``; returns the new revision."""
        return await self._write(job, revision)

    async def _write(self, job: Job, last: int) -> int:
        try:
            return await self.writes.kv_write(
                JOBS_BUCKET, _JOB + job.id, encode_job(job), last=last
            )
        except WrongRevision as exc:
            raise RevisionMismatch(job.id) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error(f"write job {job.id}", exc) from exc

    async def change(
        self, job_id: str, apply: Callable[[Job], Job], *, known: Versioned | None = None
    ) -> Versioned:
        """Apply ``apply`` to the current record and store the result, retrying on conflicts.

        ``known`` (a record and revision the caller holds) saves the first read. When
        ``apply`` returns its argument unchanged, nothing is written. Exceptions of
        ``apply`` (an invalid transition, a stale attempt) propagate.
        """
        current = known if known is not None else await self.get(job_id)
        for _ in range(_MAX_TRIES):
            job, revision = current
            changed = apply(job)
            if changed is job:
                return current
            try:
                return changed, await self.update(changed, revision)
            except RevisionMismatch:
                current = await self.get(job_id)
        raise Conflict(f"job {job_id} kept changing while being updated", job_id=job_id)

    async def watch(self, job_id: str, *, idle_s: float) -> AsyncGenerator[Versioned | None, None]:
        """The record of ``job_id`` now, then each new revision as it is written.

        Yields ``None`` after ``idle_s`` seconds without a change (for keep-alives), having
        read the record again in case the watch missed a change; ends when the record is
        gone (deleted, or expired). Raises :class:`JobNotFound` if there is no record to
        begin with. The watch is an ordered consumer of the bucket's stream, filtered to
        the key: it resumes where it was after a reconnect.
        """
        current = await self.get(job_id)
        yield current
        seen = current[1]
        try:
            sub = await self._bus.js.subscribe(
                f"$KV.{JOBS_BUCKET}.{_JOB}{job_id}",
                stream=f"KV_{JOBS_BUCKET}",
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                idle_heartbeat=_WATCH_HEARTBEAT_S,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error(f"watch job {job_id}", exc) from exc
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_s)
                except nats.errors.TimeoutError:
                    try:
                        job, revision = await self.get(job_id)
                    except JobNotFound:
                        return
                    if revision > seen:
                        seen = revision
                        yield job, revision
                    else:
                        yield None
                    continue
                revision = msg.metadata.sequence.stream
                if revision <= seen:
                    continue  # told already
                if not msg.data or (msg.headers and _GONE.intersection(msg.headers)):
                    return  # deleted, purged or expired
                seen = revision
                yield decode_job(msg.data), seen
        finally:
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("stopping the watch of job %s failed: %s", job_id, exc)

    async def list(
        self, *, kind: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[Job]:
        """The records (of ``kind``, in ``state``), newest first, at most ``limit``.

        Reads every record of the bucket (one watcher, latest values only): fine for the
        thousands of jobs a bucket keeps for a week, not an index.
        """
        found: list[Job] = []
        try:
            watcher = await self._kv.watch(_JOB + "*", ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:  # the end of what is stored now
                        break
                    if not entry.value:
                        continue
                    try:
                        job = decode_job(entry.value)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.warning("skipping a malformed job record %s", entry.key)
                        continue
                    if (kind is None or job.kind == kind) and (state is None or job.state == state):
                        found.append(job)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error("list jobs", exc) from exc
        found.sort(key=lambda j: j.created, reverse=True)
        return found[:limit]

    async def bind_key(self, key: str, binding: Binding) -> tuple[Binding, int] | None:
        """Bind idempotency ``key`` as ``binding`` says unless it is bound already.

        Returns ``None`` when this call bound it; otherwise what the key is bound to and
        the binding's revision.
        """
        name = _IDEM + hashlib.sha256(key.encode()).hexdigest()
        try:
            await self._kv.create(name, _encoder.encode(binding))
            return None
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error("bind an idempotency key", exc) from exc
        try:
            entry = await self._kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return await self.bind_key(key, binding)  # removed meanwhile: try again
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error("read an idempotency key", exc) from exc
        if not entry.value or entry.revision is None:
            return await self.bind_key(key, binding)
        try:
            return _decode_binding(entry.value), entry.revision
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise Conflict("this idempotency key's binding is unreadable; use another key") from exc

    async def rebind_key(self, key: str, binding: Binding, revision: int) -> bool:
        """Bind ``key`` as ``binding`` says if its binding is still at ``revision``."""
        name = _IDEM + hashlib.sha256(key.encode()).hexdigest()
        try:
            await self._kv.update(name, _encoder.encode(binding), last=revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            raise _bus_error("rebind an idempotency key", exc) from exc

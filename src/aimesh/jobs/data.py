"""Blobs of jobs: inputs and results too large (or too binary) for a job's record.

A job's record is small JSON, read whole by every listing; an async inference's request and
answer are neither small nor always JSON. They live here instead, in the ``aimesh_job_data``
KV bucket, as :class:`Blob` values (msgpack: bytes stay bytes) under ``in.<token>`` (an
input, named before its job exists) and ``out.<job id>`` (a result). The bucket forgets a
blob a day after it was written (:data:`~aimesh.bus.JOB_DATA_TTL_S`): a result is there
to be fetched, not archived. A blob is one bus message, so the bus's ``max_payload``
bounds its size (:attr:`JobData.max_bytes`).
"""

from __future__ import annotations

import secrets

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from aimesh.bus import JOB_DATA_BUCKET, Bus, storage_full
from aimesh.errors import (
    BusUnavailable,
    JobFailed,
    JobPending,
    QueueFull,
    RequestTooLarge,
    ResultExpired,
)
from aimesh.jobs.client import JobClient

__all__ = ["Blob", "JobData", "input_key", "job_result", "result_key", "result_path"]

# Room in a message for the blob's envelope and the KV headers around it.
_ENVELOPE_BYTES = 4096

_encoder = msgspec.msgpack.Encoder()


class Blob(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes with what is needed to send or serve them again."""

    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """Headers that go with the body (e.g. ``inference-header-content-length``)."""
    status: int = 200
    """For a result: the status it was answered with."""


_decoder = msgspec.msgpack.Decoder(Blob)


def input_key(token: str) -> str:
    """The key of an input blob."""
    return f"in.{token}"


def result_key(job_id: str) -> str:
    """The key of a job's result blob."""
    return f"out.{job_id}"


def result_path(job_id: str) -> str:
    """Where a job's result is served: ``/api/jobs/{id}/result`` (its ``result_ref``)."""
    return f"/api/jobs/{job_id}/result"


class JobData:
    """The blob bucket of one bus."""

    def __init__(self, kv: KeyValue, max_bytes: int) -> None:
        self._kv = kv
        self.max_bytes = max_bytes
        """The largest body a blob can hold on this bus."""

    @classmethod
    async def open(cls, bus: Bus) -> JobData:
        """The bucket on ``bus`` (declare the topology first)."""
        try:
            kv = await bus.js.key_value(JOB_DATA_BUCKET)
        except (nats.js.errors.BucketNotFoundError, nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(
                f"no {JOB_DATA_BUCKET} bucket on the bus at {bus.url}; declare the topology first"
            ) from exc
        return cls(kv, max(bus.nc.max_payload - _ENVELOPE_BYTES, 0))

    async def put_input(self, blob: Blob) -> str:
        """Store an input; returns the token that names it."""
        token = secrets.token_hex(16)
        await self._put(input_key(token), blob)
        return token

    async def put_result(self, job_id: str, blob: Blob) -> None:
        """Store (or replace) the result of ``job_id``."""
        await self._put(result_key(job_id), blob)

    async def get(self, key: str) -> Blob | None:
        """The blob under ``key``; ``None`` when there is none (never written, or expired)."""
        try:
            entry = await self._kv.get(key)
        except (
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError,
            nats.js.errors.InvalidKeyError,
        ):
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"could not read {key} in {JOB_DATA_BUCKET}: {exc}") from exc
        if not entry.value:
            return None
        return _decoder.decode(entry.value)

    async def _put(self, key: str, blob: Blob) -> None:
        if len(blob.body) > self.max_bytes:
            raise RequestTooLarge(len(blob.body), self.max_bytes)
        try:
            await self._kv.put(key, _encoder.encode(blob))
        except (nats.errors.Error, TimeoutError) as exc:
            if storage_full(exc):
                raise QueueFull(
                    f"could not store {key}: {JOB_DATA_BUCKET} is full "
                    "(bus.job_data_max_bytes); retry later"
                ) from exc
            raise BusUnavailable(f"could not store {key} in {JOB_DATA_BUCKET}: {exc}") from exc


_json = msgspec.json.Encoder()


async def job_result(jobs: JobClient, data: JobData, job_id: str) -> Blob:
    """The result of a job that succeeded: its result blob, or its record's result as JSON.

    Raises :class:`JobPending` while it runs, :class:`JobFailed` if it failed or was
    cancelled, :class:`ResultExpired` once its blob is gone.
    """
    job = await jobs.get(job_id)
    if not job.done:
        raise JobPending(job.id, job.state)
    if job.state != "succeeded":
        error = job.error
        raise JobFailed(
            job.id, job.state, error.code if error else None, error.message if error else None
        )
    if job.result_ref != result_path(job.id):
        return Blob(body=_json.encode(job.result))
    blob = await data.get(result_key(job.id))
    if blob is None:
        raise ResultExpired(job.id)
    return blob

"""The jobs REST adapter: decode, call :class:`JobClient`, encode. Nothing else.

Every route lives under ``/api/jobs`` so that the gateway can proxy it unchanged. Bodies
are the msgspec types of :mod:`aimesh.jobs.types` as JSON. Errors are
``{"error": message, "code": code}`` with the status of :data:`aimesh.rest.HTTP_STATUS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from aimesh.auth import Identity
from aimesh.bus import JobEvent, JobState
from aimesh.errors import Forbidden, InvalidRequest, RequestTooLarge
from aimesh.jobs.client import JobClient
from aimesh.jobs.data import JobData, job_result
from aimesh.jobs.types import JOB_ID_PATTERN, KIND_PATTERN, Job, JobSpec
from aimesh.protocol import error_responses, whole_number
from aimesh.rest import Caller, route_scope

__all__ = ["PREFIX", "STREAMS", "openapi_components", "router"]

PREFIX = "/api/jobs"
STREAMS = (PREFIX + r"/[^/]+/events",)
"""Routes whose answer lasts as long as a job: bounded apart (see :mod:`aimesh.rest.inflight`)."""
# An SSE stream says something at least this often, so that proxies keep it open.
KEEPALIVE_S = 15.0
# Room in a submission's body for what surrounds the payload (kind, key, URL...).
_SPEC_OVERHEAD_BYTES = 16 * 1024

_encoder = msgspec.json.Encoder()
_spec_decoder = msgspec.json.Decoder(JobSpec)
_JSON = "application/json"


def client(request: Request) -> JobClient:
    """The job client of this app (set up by the app's lifespan)."""
    found: JobClient = request.app.state.jobs
    return found


Jobs = Annotated[JobClient, Depends(client)]
# The rule as the document shows it; the job client checks it itself.
JobId = Annotated[
    str, Path(description="A job's id.", json_schema_extra={"pattern": JOB_ID_PATTERN})
]

# One job's record, result and events: ``read``, or ``infer`` for the caller's own jobs.
_ONE_JOB = route_scope("authenticated")


async def _may_see(jobs: JobClient, job_id: JobId, caller: Identity) -> Job:
    """The job, if ``caller`` may see it: with ``read``, or ``infer`` and it is theirs."""
    job = await jobs.get(job_id)
    if caller.has("read"):
        return job
    mine = job.submitted_by is not None and job.identity.name == caller.name
    if caller.has("infer") and mine:
        return job
    raise Forbidden(caller.name, "read")


def _json(value: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(value), status_code, headers, media_type=_JSON)


def _schema(name: str) -> dict[str, Any]:
    return {"content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _list_of(name: str) -> dict[str, Any]:
    items = {"$ref": f"#/components/schemas/{name}"}
    return {"content": {_JSON: {"schema": {"type": "array", "items": items}}}}


def openapi_components() -> dict[str, Any]:
    """The JSON schemas of the bodies, for the OpenAPI document's ``components``."""
    _refs, components = msgspec.json.schema_components(
        (JobSpec, Job, JobEvent), ref_template="#/components/schemas/{name}"
    )
    return components


router = APIRouter(prefix=PREFIX, tags=["jobs"])


@router.post(
    "",
    status_code=202,
    summary="Submit a job (an idempotency key already used returns that key's job)",
    response_class=Response,
    openapi_extra={"requestBody": {"required": True, **_schema("JobSpec")}},
    responses={202: {"description": "The job's record", **_schema("Job")}, **error_responses(409)},
)
async def submit(jobs: Jobs, request: Request, caller: Caller) -> Response:
    limit = jobs.settings.max_payload_bytes + _SPEC_OVERHEAD_BYTES
    declared = whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise RequestTooLarge(declared, limit)

    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(len(body), limit)
    try:
        spec = _spec_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f"invalid job: {exc}") from exc
    job = await jobs.submit(spec, identity=caller)
    return _json(job, 202, {"Location": f"{PREFIX}/{job.id}"})


@router.get(
    "",
    summary="List jobs, newest first",
    response_class=Response,
    responses={200: {"description": "Job records", **_list_of("Job")}},
)
async def list_jobs(
    jobs: Jobs,
    kind: Annotated[str | None, Query(json_schema_extra={"pattern": KIND_PATTERN})] = None,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    return _json(await jobs.list(kind=kind, state=state, limit=limit))


@router.get(
    "/{job_id}",
    summary="Show a job",
    response_class=Response,
    responses={200: {"description": "The job's record", **_schema("Job")}},
    openapi_extra=_ONE_JOB,
)
async def get_job(jobs: Jobs, job_id: JobId, caller: Caller) -> Response:
    return _json(await _may_see(jobs, job_id, caller))


@router.get(
    "/{job_id}/result",
    summary="A finished job's result (an async inference: the model's answer, as it answered)",
    response_class=Response,
    responses={
        200: {
            "description": "The result: the model's answer (JSON, or the binary tensor "
            "extension), or the job's JSON result",
            "content": {
                _JSON: {"schema": {}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        409: {"description": "The job has not succeeded (job_pending, job_failed)"},
        410: {"description": "The result was kept a day and has expired (result_expired)"},
    },
    openapi_extra=_ONE_JOB,
)
async def get_result(jobs: Jobs, request: Request, job_id: JobId, caller: Caller) -> Response:
    await _may_see(jobs, job_id, caller)
    data: JobData = request.app.state.job_data
    blob = await job_result(jobs, data, job_id)
    return Response(
        blob.body,
        blob.status,
        dict(blob.headers),
        media_type=blob.content_type,
    )


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job (a running one stops when its worker sees the request)",
    response_class=Response,
    responses={200: {"description": "The job's record", **_schema("Job")}, **error_responses(409)},
)
async def cancel_job(jobs: Jobs, job_id: JobId) -> Response:
    return _json(await jobs.cancel(job_id))


@router.post(
    "/{job_id}/retry",
    status_code=202,
    summary="Run a failed or cancelled job again, as a new job (its retry_of names this one)",
    response_class=Response,
    responses={
        202: {"description": "The new job's record", **_schema("Job")},
        409: {"description": "The job is queued, running or succeeded (job_not_retryable)"},
    },
)
async def retry_job(jobs: Jobs, job_id: JobId, caller: Caller) -> Response:
    job = await jobs.retry(job_id, identity=caller)
    return _json(job, 202, {"Location": f"{PREFIX}/{job.id}"})


@router.get(
    "/{job_id}/events",
    summary="The job's state, then each change, as server-sent events; ends with the job",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: each `event:` is the change, `id:` the "
            "record's revision, `data:` a JobEvent as JSON; `: keep-alive` comments between",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
    openapi_extra=_ONE_JOB,
)
async def job_events(jobs: Jobs, job_id: JobId, caller: Caller) -> StreamingResponse:
    await _may_see(jobs, job_id, caller)  # a 404 now rather than an empty stream
    return StreamingResponse(
        _sse(jobs, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(jobs: JobClient, job_id: JobId) -> AsyncIterator[bytes]:
    async for event in jobs.watch(job_id, idle_s=KEEPALIVE_S):
        if event is None:
            yield b": keep-alive\n\n"
        else:
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                event.revision,
                event.change.encode(),
                _encoder.encode(event),
            )

"""The lake's REST adapter: decode, call :class:`Lake`, encode. Nothing else.

Every route lives under ``/api/lake`` so that the gateway can proxy it unchanged. Errors
are ``{"error": message, "code": code}`` with the status of :data:`aimesh.rest.HTTP_STATUS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import msgspec
import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam

from aimesh.errors import InvalidRequest, RequestTooLarge
from aimesh.lake.delta import columns_of
from aimesh.lake.lake import MAX_RETAIN_HOURS, MAX_TARGET_SIZE, VACUUM_RETAIN_HOURS, Lake
from aimesh.lake.query import QueryCancel
from aimesh.lake.refs import DATASET_NAME, check_dataset_name
from aimesh.lake.types import (
    Column,
    CompactResult,
    DatasetInfo,
    DatasetSummary,
    DatasetVersion,
    IngestResult,
    QueryAnswer,
    QueryRequest,
    QueryResult,
    SourceFormat,
    VacuumResult,
)
from aimesh.protocol import STORED_INT_MAX, error_responses, whole_number

__all__ = ["PREFIX", "RAW_BODIES", "LakeService", "answer", "query_request_schema", "router"]

PREFIX = "/api/lake"
RAW_BODIES = (PREFIX + r"/datasets/[^/]+/ingest",)
"""Routes whose body is a file, bounded by ``lake.max_upload_bytes``; every other is JSON."""

_JSON = "application/json"
_UPLOAD_CHUNK = 1024**2
_MIB = 1024**2


@dataclass(frozen=True)
class LakeService:
    """What the routes need: the lake and the limits of the service."""

    lake: Lake
    max_query_rows: int
    max_upload_bytes: int
    upload_dir: Path | None = None
    """Where uploads wait while they are ingested (default: the system's temp folder)."""


def service(request: Request) -> LakeService:
    """The service this app runs (set up by :func:`aimesh.lake.app.create_app`)."""
    found: LakeService = request.app.state.lake
    return found


Service = Annotated[LakeService, Depends(service)]
Version = Annotated[
    int | None, Query(ge=0, le=STORED_INT_MAX, description="A version (default: the latest).")
]
# The rule as the document shows it; the lake checks it itself (invalid_name).
Name = Annotated[
    str,
    PathParam(description="A dataset's name.", json_schema_extra={"pattern": DATASET_NAME.pattern}),
]

router = APIRouter(prefix=PREFIX, tags=["lake"])


@router.get("/datasets", summary="List datasets at their latest versions")
def list_datasets(svc: Service) -> list[DatasetSummary]:
    return svc.lake.list_datasets()


@router.get(
    "/datasets/{name}",
    summary="A dataset's schema, size and newest versions",
    responses=error_responses(410),
)
def describe(svc: Service, name: Name, version: Version = None) -> DatasetInfo:
    return svc.lake.describe(name, version)


@router.get(
    "/datasets/{name}/schema",
    summary="A dataset's columns at a version",
    responses=error_responses(410),
)
def schema(svc: Service, name: Name, version: Version = None) -> list[Column]:
    return columns_of(svc.lake.schema(name, version))


@router.get("/datasets/{name}/versions", summary="A dataset's versions, newest first")
def versions(
    svc: Service,
    name: Name,
    limit: Annotated[
        int | None, Query(ge=1, le=STORED_INT_MAX, description="The newest LIMIT versions.")
    ] = None,
) -> list[DatasetVersion]:
    return svc.lake.history(name, limit)


@router.post(
    "/query",
    summary="Run one read-only SQL query (each dataset is a table of its name)",
    response_model=QueryAnswer,
    response_class=Response,
    responses={
        200: {
            "description": "The rows",
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/QueryAnswer"}}},
        },
        **error_responses(404, 410, 422, 504),
    },
)
async def query(svc: Service, request: QueryRequest, http: Request) -> Response:
    limit = request.limit or min(svc.lake.query_rows, svc.max_query_rows)
    if limit > svc.max_query_rows:
        raise InvalidRequest(
            f"limit {limit} is above the most this service returns ({svc.max_query_rows})",
            limit=limit,
            max=svc.max_query_rows,
        )
    # The query runs in a thread; a client that goes away stops it (and frees its slot).
    # (A task, not a task group: the query's own error must reach the handlers unwrapped.)
    cancel = QueryCancel()
    watching = asyncio.create_task(_on_disconnect(http, cancel))
    try:
        result = await anyio.to_thread.run_sync(
            lambda: svc.lake.query(
                request.sql,
                version=request.version,
                versions=request.versions,
                limit=limit,
                cancel=cancel,
            )
        )
    finally:
        watching.cancel()
    return Response(msgspec.json.encode(answer(result)), media_type=_JSON)


async def _on_disconnect(request: Request, cancel: QueryCancel) -> None:
    """Call ``cancel`` when the client disconnects (the body is read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel()


@router.post(
    "/datasets/{name}/ingest",
    status_code=201,
    summary="Append an uploaded file (the raw body) as a new version",
    responses=error_responses(409, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def ingest(
    svc: Service,
    request: Request,
    name: Name,
    format: Annotated[SourceFormat, Query(description="The body's format.")],
    evolve: Annotated[bool, Query(description="Add columns the dataset lacks.")] = False,
    partition_by: Annotated[
        list[str] | None, Query(description="Partition columns (first ingest only).")
    ] = None,
) -> IngestResult:
    """Write the body to a temporary file as it arrives, then ingest it as one new version.

    A client that goes away before the whole body arrived leaves nothing behind: no
    version, no new dataset, no temporary file. Once the body has arrived, the ingest
    (bounded by `lake.max_upload_bytes`) runs to its end whether the client still waits or not:
    it commits one new version or nothing, never half of one.
    """
    check_dataset_name(name)
    declared = request.headers.get("content-length")
    if declared is not None:
        length = whole_number(declared)
        if length is None:
            raise InvalidRequest("Content-Length must be a number of bytes")
        if length > svc.max_upload_bytes:
            raise RequestTooLarge(length, svc.max_upload_bytes)
    with _upload_file(svc.upload_dir, f".{format}") as path:
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > svc.max_upload_bytes:
                    raise RequestTooLarge(size, svc.max_upload_bytes)
                await anyio.to_thread.run_sync(out.write, chunk)
        if size == 0:
            raise InvalidRequest("the upload is empty: send the file as the request body")
        result: IngestResult = await anyio.to_thread.run_sync(
            lambda: svc.lake.ingest(
                name, [path], format=format, evolve=evolve, partition_by=partition_by
            )
        )
    return result


@router.post(
    "/datasets/{name}/compact",
    summary="Compact a dataset: rewrite its small files into larger ones, as a new version",
    description="Rows, schema and older versions stay readable as they were. With nothing "
    "to compact, no version is written (`compacted` is false). One compaction or vacuum of "
    "a dataset at a time: another is a 409 (`conflict`).",
    responses=error_responses(409),
)
def compact(
    svc: Service,
    name: Name,
    target_size_mib: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_TARGET_SIZE // _MIB,
            description="The size files grow to, in MiB (default: the table's "
            "delta.targetFileSize, or 100 MiB).",
        ),
    ] = None,
) -> CompactResult:
    return svc.lake.compact(name, None if target_size_mib is None else target_size_mib * _MIB)


@router.post(
    "/datasets/{name}/vacuum",
    summary="Vacuum a dataset: delete the data files only older versions read",
    description="Deletes the files that no version of the last `retain_hours` reads; the "
    "versions older than that can no longer be read (`dataset_version_gone`). A dry run (the "
    f"default) only lists them. Below {VACUUM_RETAIN_HOURS} hours a real one takes "
    "`force=true`. One compaction or vacuum of a dataset at a time: another is a 409.",
    responses=error_responses(409),
)
def vacuum(
    svc: Service,
    name: Name,
    retain_hours: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_RETAIN_HOURS,
            description="Keep the files that versions of the last hours read.",
        ),
    ] = VACUUM_RETAIN_HOURS,
    dry_run: Annotated[bool, Query(description="Only list the files; false deletes them.")] = True,
    force: Annotated[
        bool,
        Query(description=f"Allow a retention below {VACUUM_RETAIN_HOURS} hours."),
    ] = False,
) -> VacuumResult:
    return svc.lake.vacuum(name, retain_hours, dry_run=dry_run, force=force)


def query_request_schema(max_rows: int) -> dict[str, Any]:
    """The schema of :class:`QueryRequest` as a service returning ``max_rows`` reads it.

    Its ``limit`` is at most ``max_rows`` (a setting, so no model can say it): the document
    then asks for no more than :func:`query` answers instead of refusing.
    """
    schema = QueryRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    limit = schema["properties"]["limit"]
    for option in limit.get("anyOf", [limit]):
        if option.get("type") == "integer":
            option["maximum"] = max_rows
    return schema


@contextlib.contextmanager
def _upload_file(folder: Path | None, suffix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="aimesh-upload-", suffix=suffix, dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def answer(result: QueryResult) -> dict[str, Any]:
    """A query result as the JSON body of :class:`QueryAnswer` (rows as lists of values)."""
    table = result.table
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else []
    return {
        "columns": [c.model_dump() for c in columns_of(table.schema)],
        "rows": msgspec.to_builtins(rows, enc_hook=_plain),
        "row_count": table.num_rows,
        "truncated": result.truncated,
        "versions": result.versions,
        "elapsed_ms": round(result.elapsed_s * 1000, 3),
    }


def _plain(value: Any) -> Any:
    # Intervals and other values JSON has no type for travel as their text.
    if isinstance(value, pa.Scalar):
        return value.as_py()
    return str(value)

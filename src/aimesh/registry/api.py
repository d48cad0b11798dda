"""The registry's REST adapter: decode, call :class:`LocalRegistry`, encode. Nothing else.

Every route lives under ``/api/registry`` so that the gateway can proxy it unchanged.
Errors are ``{"error": message, "code": code}`` with the status of :data:`aimesh.rest.HTTP_STATUS`.
"""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import FileResponse

from aimesh.auth import KEY_NAME_PATTERN, Identity
from aimesh.errors import ArtifactTooLarge, Forbidden, InvalidRequest
from aimesh.protocol import (
    ALIAS_NAME,
    MODEL_NAME,
    STORED_INT_MAX,
    VERSION_REF,
    error_responses,
    whole_number,
)
from aimesh.registry.service import LocalRegistry
from aimesh.registry.types import (
    SHA256_HEX,
    Alias,
    AliasMove,
    AliasRollback,
    ArtifactInfo,
    GarbageReport,
    HistoryEntry,
    KeyCreate,
    KeyDigest,
    KeyInfo,
    Metrics,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    NewKey,
    VersionCreate,
    check_sha256,
)
from aimesh.rest import Caller, route_scope

PREFIX = "/api/registry"
RAW_BODIES = (PREFIX + "/artifacts",)
"""Routes whose body is raw bytes, bounded by ``registry.max_artifact_bytes``; others: JSON."""
ACTOR_HEADER = "X-Aimesh-Actor"
ACTOR_LIMIT = 256
"""The width of every column that records who made a change (the detail is cut to fit)."""
SHA256_HEADER = "X-Aimesh-Sha256"


def registry(request: Request) -> LocalRegistry:
    """The registry this app serves (set up by the app's lifespan)."""
    found: LocalRegistry = request.app.state.registry
    return found


def actor_of(caller: Identity, header: str | None) -> str:
    """Who a change is recorded as made by: always the authenticated identity's name.

    The actor header is believed by no one: it only adds detail beneath the identity, as
    ``name (detail)`` (``writer (ci@build-7)``). With no key at all (keyless loopback mode)
    the caller is the local operator, so a change made through the API is recorded as
    ``operator (user@host)``; the CLI sends ``user@host`` as the detail. The whole is cut
    to :data:`ACTOR_LIMIT` characters.
    """
    detail = " ".join((header or "").split())  # one line: no control characters, no newlines
    if not detail or detail == caller.name:
        return caller.name
    return f"{caller.name} ({detail})"[:ACTOR_LIMIT]


Reg = Annotated[LocalRegistry, Depends(registry)]
Actor = Annotated[str | None, Header(alias=ACTOR_HEADER, max_length=256)]
# The name rules as the document shows them; the registry checks them itself (invalid_name).
Name = Annotated[
    str, Path(description="A model's name.", json_schema_extra={"pattern": MODEL_NAME.pattern})
]
AliasName = Annotated[
    str,
    Path(
        description="An alias (not `latest`).",
        json_schema_extra={"pattern": ALIAS_NAME.pattern, "not": {"const": "latest"}},
    ),
]
Ref = Annotated[
    str,
    Path(
        description="A version number, an alias or `latest`.",
        json_schema_extra={"pattern": VERSION_REF.pattern},
    ),
]
Number = Annotated[int, Path(ge=1, le=STORED_INT_MAX, description="A version number.")]
Sha256 = Annotated[
    str, Path(description="A sha256, in hex.", json_schema_extra={"pattern": SHA256_HEX.pattern})
]
KeyName = Annotated[
    str, Path(description="A key's name.", json_schema_extra={"pattern": KEY_NAME_PATTERN})
]

router = APIRouter(prefix=PREFIX, tags=["registry"])


@router.get("/models", summary="List models")
def list_models(reg: Reg) -> list[ModelInfo]:
    return reg.list_models()


@router.post("/models", status_code=201, summary="Create a model", responses=error_responses(409))
def create_model(reg: Reg, spec: ModelCreate, caller: Caller, actor: Actor = None) -> ModelInfo:
    return reg.create_model(spec, actor=actor_of(caller, actor))


@router.get("/models/{name}", summary="Show a model")
def get_model(reg: Reg, name: Name) -> ModelInfo:
    return reg.get_model(name)


@router.patch("/models/{name}", summary="Change a model's description or tags")
def update_model(
    reg: Reg, name: Name, change: ModelUpdate, caller: Caller, actor: Actor = None
) -> ModelInfo:
    return reg.update_model(name, change, actor=actor_of(caller, actor))


@router.get("/models/{name}/versions", summary="List a model's versions")
def list_versions(reg: Reg, name: Name) -> list[ModelVersion]:
    return reg.list_versions(name)


@router.post(
    "/models/{name}/versions",
    status_code=201,
    summary="Create a version",
    responses=error_responses(409, 422, 500),
)
def create_version(
    reg: Reg, who: Caller, name: Name, spec: VersionCreate, actor: Actor = None
) -> ModelVersion:
    return reg.create_version(name, spec, actor=actor_of(who, actor), caller=who)


@router.get("/models/{name}/versions/{ref}", summary="Show a version by number, alias or 'latest'")
def get_version(reg: Reg, name: Name, ref: Ref) -> ModelVersion:
    return reg.get_version(name, ref)


@router.get(
    "/models/{name}/versions/{ref}/artifact",
    summary="Download a version's artifact (verified against its sha256 first)",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        },
        **error_responses(500),
    },
)
def download_artifact(reg: Reg, name: Name, ref: Ref) -> FileResponse:
    version = reg.get_version(name, ref)
    path = reg.fetch_artifact(version)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{version.model}-{version.version}",
        headers={SHA256_HEADER: version.artifact_sha256},
    )


@router.post(
    "/models/{name}/versions/{number}/archive",
    summary="Archive a version",
    responses=error_responses(409),
)
def archive_version(
    reg: Reg, name: Name, number: Number, caller: Caller, actor: Actor = None
) -> ModelVersion:
    return reg.archive_version(name, number, actor=actor_of(caller, actor))


@router.post(
    "/models/{name}/versions/{number}/metrics",
    summary="Add metrics to a version",
    responses=error_responses(409),
)
def log_metrics(reg: Reg, name: Name, number: Number, metrics: Metrics) -> ModelVersion:
    return reg.log_metrics(name, number, metrics)


@router.get("/models/{name}/aliases", summary="List a model's aliases")
def list_aliases(reg: Reg, name: Name) -> list[Alias]:
    return reg.list_aliases(name)


@router.put(
    "/models/{name}/aliases/{alias}",
    summary="Point an alias at a version",
    responses=error_responses(409),
)
def set_alias(
    reg: Reg, name: Name, alias: AliasName, move: AliasMove, caller: Caller, actor: Actor = None
) -> Alias:
    return reg.set_alias(name, alias, move.version, actor=actor_of(caller, actor))


@router.post(
    "/models/{name}/aliases/{alias}/rollback",
    summary="Point an alias back at the version it held before",
    description="Atomic and recorded (an alias `moved` event whose data says `rollback`, "
    "`from` and `to`): each rollback undoes the newest move not undone yet. 409 "
    "`no_previous_version` when the history holds none, `alias_moved` when `from_version` "
    "is given and the alias points elsewhere, `version_archived` when the one before is.",
    responses=error_responses(409),
)
def rollback_alias(
    reg: Reg,
    name: Name,
    alias: AliasName,
    caller: Caller,
    expected: AliasRollback | None = None,
    actor: Actor = None,
) -> Alias:
    from_version = expected.from_version if expected is not None else None
    return reg.rollback_alias(name, alias, from_version=from_version, actor=actor_of(caller, actor))


@router.delete("/models/{name}/aliases/{alias}", status_code=204, summary="Remove an alias")
def delete_alias(
    reg: Reg, name: Name, alias: AliasName, caller: Caller, actor: Actor = None
) -> None:
    reg.delete_alias(name, alias, actor=actor_of(caller, actor))


@router.get("/models/{name}/history", summary="A model's changes, newest first")
def history(
    reg: Reg, name: Name, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[HistoryEntry]:
    return reg.history(name, limit=limit)


@router.post(
    "/artifacts",
    status_code=201,
    summary="Upload an artifact (the raw bytes as the body, streamed)",
    responses=error_responses(422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_artifact(
    reg: Reg,
    request: Request,
    sha256: Annotated[
        str | None, Query(description="The sha256 the bytes must hash to (refused otherwise).")
    ] = None,
) -> ArtifactInfo:
    """Stage the body as it arrives, then store it under its sha256.

    A client that goes away before the whole body arrived leaves nothing behind: its
    staging file is removed and nothing is stored. Once the body has arrived, the rest
    (the digest check, the move into place) runs to its end whether the client still waits
    or not, bounded by `registry.max_artifact_bytes`: an artifact is stored whole or not at all.
    """
    if sha256 is not None:
        check_sha256(sha256)
    declared = request.headers.get("content-length")
    if declared is not None:
        length = whole_number(declared)
        if length is None:
            raise InvalidRequest("Content-Length must be a number of bytes")
        if length > reg.max_artifact_bytes:
            raise ArtifactTooLarge(length, reg.max_artifact_bytes)

    writer = await anyio.to_thread.run_sync(
        lambda: reg.artifacts.writer(max_bytes=reg.max_artifact_bytes, expected_sha256=sha256)
    )
    with writer:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(writer.write, chunk)
        return await anyio.to_thread.run_sync(writer.commit)


@router.get(
    "/artifacts/{sha256}",
    summary="Show a stored artifact, hashed again (404 when absent, 500 artifact_tampered when "
    "damaged: upload the same bytes to repair it)",
    responses=error_responses(500),
)
def get_artifact(reg: Reg, sha256: Sha256) -> ArtifactInfo:
    check_sha256(sha256)
    return reg.artifacts.verify(sha256)


@router.post(
    "/gc",
    summary="Remove artifacts no version uses and abandoned uploads, past the grace period",
    openapi_extra=route_scope("admin"),
)
def collect_garbage(
    reg: Reg,
    who: Caller,
    dry_run: Annotated[bool, Query(description="Only list what would be removed.")] = False,
) -> GarbageReport:
    return reg.collect_garbage(dry_run=dry_run, caller=who)


# -- API keys (admin) ------------------------------------------------------------------------

_ADMIN = route_scope("admin")


@router.get("/keys", summary="List API keys (never a key or its digest)", openapi_extra=_ADMIN)
def list_keys(reg: Reg) -> list[KeyInfo]:
    return reg.list_keys()


@router.post(
    "/keys",
    status_code=201,
    summary="Make an API key (shown once)",
    openapi_extra=_ADMIN,
    responses=error_responses(409),
)
def create_key(
    reg: Reg, request: Request, spec: KeyCreate, caller: Caller, actor: Actor = None
) -> NewKey:
    made = reg.create_key(spec, actor=actor_of(caller, actor))
    _reload_keys(request)
    return made


@router.get(
    "/keys/digests",
    summary="The active keys' digests, for services checking requests (service credential)",
    openapi_extra=_ADMIN,
)
def key_digests(reg: Reg, caller: Caller) -> list[KeyDigest]:
    if caller.kind not in ("service", "operator"):
        raise Forbidden(caller.name, "service")
    return [
        KeyDigest(name=k.name, sha256=k.sha256, scopes=sorted(k.scopes)) for k in reg.key_entries()
    ]


@router.delete("/keys/{name}", summary="Revoke an API key", openapi_extra=_ADMIN)
def revoke_key(
    reg: Reg, request: Request, name: KeyName, caller: Caller, actor: Actor = None
) -> KeyInfo:
    revoked = reg.revoke_key(name, actor=actor_of(caller, actor))
    _reload_keys(request)
    return revoked


def _reload_keys(request: Request) -> None:
    """This service's own keyring learns of its change at once (others by the event)."""
    keys = getattr(request.app.state, "keys", None)
    if keys is not None:
        keys.reload_now()

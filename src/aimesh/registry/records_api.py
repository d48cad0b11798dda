"""The REST routes of a record kind, made from its definition (:mod:`aimesh.registry.kinds`).

Under ``/api/<plural>``: ``GET`` lists (by name, bounded, ``after`` the last of a page);
``GET /{name}`` reads one, its revision in ``ETag``; ``PUT /{name}`` creates or replaces it
(body: the spec; ``If-None-Match: *`` creates only, ``If-Match: "N"`` replaces only at
revision N, ``If-Match: *`` replaces only; 201 when created, 200 when replaced);
``DELETE /{name}`` (``If-Match`` as for PUT); ``GET /{name}/history``, newest first. Writes
need the kind's write scope, reads ``read``. Like ``api.py``: decode, call
:class:`LocalRegistry`, encode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel

from aimesh.errors import InvalidRequest
from aimesh.protocol import STORED_INT_MAX, error_responses, whole_number
from aimesh.registry.api import Actor, Reg, actor_of
from aimesh.registry.kinds import Expect, RecordKind
from aimesh.rest import Caller, route_scope

__all__ = ["expectation", "record_router"]

F = TypeVar("F", bound=Callable[..., Any])

ENTITY_TAG = r'^(\*|(W/)?"?[0-9]{1,19}"?)$'
"""What ``If-Match`` takes: ``*``, or a revision as the ``ETag`` gave it (``"3"``)."""

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=32,
        description='Only if the record is at this revision (its ETag, e.g. "3"); * : only '
        "if it exists. A mismatch is 409 record_conflict.",
        json_schema_extra={"pattern": ENTITY_TAG},
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=32,
        description="* : only if no record has the name (create). Otherwise 409 record_exists.",
        json_schema_extra={"pattern": r"^\*$"},
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many.")]


def expectation(if_match: str | None, if_none_match: str | None) -> Expect:
    """What a write expects of the record, from its conditional headers."""
    if if_match is not None and if_none_match is not None:
        raise InvalidRequest("send If-Match or If-None-Match, not both")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise InvalidRequest("If-None-Match takes only *: create only if there is none")
        return "absent"
    if if_match is None:
        return None
    return _revision_of(if_match)


def _revision_of(tag: str) -> int | Literal["present"]:
    value = tag.strip()
    if value == "*":
        return "present"
    number = whole_number(value.removeprefix("W/").strip('"'))
    if number is None or not 1 <= number <= STORED_INT_MAX:
        raise InvalidRequest(f'If-Match must be * or a revision such as "3", not {tag!r}')
    return number


def _etag(revision: int) -> str:
    return f'"{revision}"'


def _typed(endpoint: F, **annotations: Any) -> F:
    """``endpoint`` with these parameters' annotations replaced by types only the kind knows
    (its spec, its name's rule): FastAPI reads a route's parameters from its signature."""
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = [
        p.replace(annotation=annotations.get(p.name, p.annotation))
        for p in signature.parameters.values()
    ]
    setattr(endpoint, "__signature__", signature.replace(parameters=parameters))  # noqa: B010
    return endpoint


def record_router(kind: RecordKind[Any]) -> APIRouter:
    """The routes of ``kind`` under ``/api/<plural>``."""
    router = APIRouter(prefix=f"/api/{kind.plural}", tags=[kind.plural])
    rule = {"pattern": kind.name_pattern.pattern}
    name_type = Annotated[str, Path(description=f"The {kind.name}'s name.", json_schema_extra=rule)]
    after_type = Annotated[
        str | None,
        Query(
            max_length=128,
            description=f"Only names after this one (the last {kind.name} of a page).",
            json_schema_extra=rule,
        ),
    ]
    about = f"{kind.description} " if kind.description else ""
    write = route_scope(kind.write_scope)
    record = kind.record_type

    def list_records(reg: Reg, limit: Limit = 100, after: str | None = None) -> Any:
        return reg.list_records(kind, limit=limit, after=after)

    def get_record(reg: Reg, name: str, response: Response) -> Any:
        found = reg.get_record(kind, name)
        response.headers["ETag"] = _etag(found.revision)
        return found

    def put_record(
        reg: Reg,
        caller: Caller,
        name: str,
        spec: BaseModel,
        response: Response,
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
        actor: Actor = None,
    ) -> Any:
        expect = expectation(if_match, if_none_match)
        written, created = reg.write_record(
            kind, name, spec, expect=expect, actor=actor_of(caller, actor)
        )
        response.status_code = 201 if created else 200
        response.headers["ETag"] = _etag(written.revision)
        return written

    def delete_record(
        reg: Reg, caller: Caller, name: str, if_match: IfMatch = None, actor: Actor = None
    ) -> Response:
        expect = _revision_of(if_match) if if_match is not None else "present"
        revision = None if expect == "present" else expect
        reg.delete_record(kind, name, revision=revision, actor=actor_of(caller, actor))
        return Response(status_code=204)

    def history(reg: Reg, name: str, limit: Limit = 100) -> Any:
        return reg.record_history(kind, name, limit=limit)

    def act(
        reg: Reg,
        caller: Caller,
        name: str,
        action: str,
        response: Response,
        if_match: IfMatch = None,
        actor: Actor = None,
    ) -> Any:
        expect = _revision_of(if_match) if if_match is not None else "present"
        revision = None if expect == "present" else expect
        done = reg.act_on_record(
            kind, name, action, revision=revision, actor=actor_of(caller, actor)
        )
        response.headers["ETag"] = _etag(done.revision)
        return done

    router.add_api_route(
        "",
        _typed(list_records, after=after_type),
        methods=["GET"],
        response_model=list[record],  # type: ignore[valid-type]
        summary=f"List {kind.plural}, by name",
        description=about,
    )
    router.add_api_route(
        "/{name}",
        _typed(get_record, name=name_type),
        methods=["GET"],
        response_model=record,
        summary=f"Show a {kind.name} (its revision in ETag)",
    )
    router.add_api_route(
        "/{name}",
        _typed(put_record, name=name_type, spec=kind.spec),
        methods=["PUT"],
        response_model=record,
        summary=f"Create or replace a {kind.name}",
        description=f"{about}The body is its spec. If-None-Match: * creates only; "
        'If-Match: "N" replaces only at revision N (a mismatch is 409 record_conflict).',
        responses={
            201: {"model": record, "description": "Created"},
            **error_responses(409, *kind.write_errors),
        },
        openapi_extra=write,
    )
    router.add_api_route(
        "/{name}",
        _typed(delete_record, name=name_type),
        methods=["DELETE"],
        status_code=204,
        response_class=Response,
        summary=f"Delete a {kind.name} (its history stays)",
        responses=error_responses(409),
        openapi_extra=write,
    )
    if kind.actions:
        names = tuple(sorted(kind.actions))
        action_type = Annotated[
            Literal[names],  # type: ignore[valid-type]
            Path(description=f"One of the {kind.name}'s actions: {', '.join(names)}."),
        ]
        router.add_api_route(
            "/{name}/actions/{action}",
            _typed(act, name=name_type, action=action_type),
            methods=["POST"],
            response_model=record,
            summary=f"Run an action on a {kind.name} ({', '.join(names)})",
            description=f"{about}The record as the action left it (its revision in ETag). "
            'If-Match: "N" acts only at revision N.',
            responses=error_responses(409, *kind.write_errors),
            openapi_extra=write,
        )
    router.add_api_route(
        "/{name}/history",
        _typed(history, name=name_type),
        methods=["GET"],
        response_model=list[kind.revision_type],  # type: ignore[name-defined]
        summary=f"A {kind.name}'s revisions, newest first (deletes included)",
    )
    return router

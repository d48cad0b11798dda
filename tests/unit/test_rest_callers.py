"""Which scope a FastAPI route needs: declared on the route, else by method."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter

from aimesh.rest import route_scope, scope_of

router = APIRouter()


@router.get("/things")
def list_things() -> list[str]:
    return []


@router.post("/things")
def make_thing() -> None:
    return None


@router.delete("/keys/{name}", openapi_extra=route_scope("admin"))
def revoke(name: str) -> None:
    return None


@router.get("/health", openapi_extra=route_scope("open"))
def health() -> None:
    return None


@router.get("/jobs/{job_id}", openapi_extra=route_scope("authenticated"))
def one_job(job_id: str) -> None:
    return None


@router.get("/docs", include_in_schema=False)
def docs() -> None:
    return None


def _route(path: str, method: str) -> Any:
    return next(r for r in router.routes if r.path == path and method in r.methods)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "method", "needed"),
    [
        ("/things", "GET", "read"),
        ("/things", "HEAD", "read"),
        ("/things", "POST", "write"),
        ("/keys/{name}", "DELETE", "admin"),
        ("/health", "GET", None),
        ("/jobs/{job_id}", "GET", "authenticated"),
        ("/docs", "GET", None),
    ],
)
def test_a_route_needs_what_it_declares_else_read_to_look_and_write_to_change(
    path: str, method: str, needed: str | None
) -> None:
    route = _route(path, "GET" if method == "HEAD" else method)
    assert scope_of(route, method) == needed

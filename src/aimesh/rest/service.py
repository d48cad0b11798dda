"""What every FastAPI service of the platform shares: the app's frame and its discovery entry.

The registry, the lake and the jobs service differ in their routes and what they open at
start; :func:`service_app` gives each the same frame (title, the JSON error handlers with
the platform's one status table, its router, ``/health`` (readiness: 503 while a dependency
it cannot work without is gone, see :mod:`aimesh.rest.readiness`) and ``/health/live``,
``/docs`` with Swagger UI served from installed files), and :func:`announced` keeps the
service's discovery entry while the app runs, so that gateways proxy ``/api/<kind>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response

from aimesh.auth import Keyring
from aimesh.bus import announce, describe_service
from aimesh.config import AuthSettings, Settings
from aimesh.errors import RouteNotFound
from aimesh.observability import cancel_and_wait
from aimesh.rest.callers import identity, route_scope
from aimesh.rest.docs import DOCS_ASSETS_URL, docs_asset, swagger_page
from aimesh.rest.errors import install_error_handlers
from aimesh.rest.guard import Guard, GuardedApp
from aimesh.rest.inflight import InFlight
from aimesh.rest.openapi import document_errors
from aimesh.rest.readiness import Readiness

__all__ = ["announced", "service_app"]

ServiceKind = Literal["registry", "lake", "jobs"]
_OPENAPI_URL = "/openapi.json"
_REPORT: dict[str, Any] = {
    "description": "Each dependency: ok, or why it cannot be used now",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "required": ["status", "checks"],
            },
        }
    },
}
# The open routes, never refused for the load: a full service still says how it is.
_UNBOUNDED = (
    "/health",
    "/health/live",
    "/docs",
    re.escape(DOCS_ASSETS_URL) + ".+",
    re.escape(_OPENAPI_URL),
)
# Longest wait for the background tasks to end when the app stops.
_BACKGROUND_STOP_S = 5.0


def service_app(
    *,
    title: str,
    description: str,
    router: APIRouter,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    auth: AuthSettings,
    max_body_bytes: int,
    max_concurrency: int,
    keyring: Keyring,
    raw_bodies: Sequence[str] = (),
    streams: Sequence[str] = (),
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    schemas: Mapping[str, Any] | None = None,
    readiness: Readiness | None = None,
) -> FastAPI:
    """A FastAPI app with the platform's error bodies, ``router``, ``GET /health``, ``/docs``.

    It stands behind :class:`~aimesh.rest.GuardedApp`: ``auth``'s origins and hosts, JSON
    bodies up to ``max_body_bytes`` except on the routes ``raw_bodies`` matches (uploads),
    at most ``max_concurrency`` requests in flight (503 ``overloaded`` beyond; the routes
    ``streams`` matches, long-lived answers, may hold half of them; health and docs are
    never refused: see :mod:`aimesh.rest.inflight`).
    Every route checks the caller's key against ``keyring`` (:mod:`aimesh.rest.callers`);
    ``/health``, ``/health/live`` and the docs are open. ``background`` tasks (keeping the
    keyring current) run while the app does. ``/health`` answers 200 while every dependency
    ``readiness`` names is usable and 503 (with each one's state) otherwise; ``/health/live``
    answers 200 for as long as the process serves. Its ``/openapi.json`` documents every
    error each route can answer (:func:`~aimesh.rest.document_errors`), with ``schemas``
    among its components (bodies that are not pydantic models, which FastAPI cannot
    describe).

    FastAPI's own ``/docs`` and ``/redoc`` load their scripts from a CDN; these pages load
    them from this server (:mod:`aimesh.rest.docs`), so the docs work offline.
    """

    @contextlib.asynccontextmanager
    async def with_background(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run(), name=run.__name__) for run in background]
        try:
            async with lifespan(app):
                yield
        finally:
            await cancel_and_wait(tasks, _BACKGROUND_STOP_S)

    app = FastAPI(
        title=title,
        version="0.1.0",
        description=description,
        lifespan=with_background,
        openapi_url=_OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(identity)],
    )
    app.state.keyring = keyring
    guard = Guard.from_settings(auth)
    in_flight = InFlight(max_concurrency, unbounded=_UNBOUNDED, streams=streams)
    app.add_middleware(
        GuardedApp,
        guard=guard,
        max_body_bytes=max_body_bytes,
        raw_bodies=raw_bodies,
        in_flight=in_flight,
    )
    install_error_handlers(app)  # outside the guard: its refusals carry the request id too
    app.include_router(router)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(swagger_page(f"{title} - Swagger UI", _OPENAPI_URL))

    @app.get(DOCS_ASSETS_URL + "{name}", include_in_schema=False)
    async def docs_assets(name: str) -> Response:
        asset = docs_asset(name)
        if asset is None:
            raise RouteNotFound(f"no docs asset {name!r}")
        headers = {key.decode(): value.decode() for key, value in asset.headers}
        return Response(asset.body, media_type=asset.content_type.decode(), headers=headers)

    ready = readiness or Readiness()

    @app.get(
        "/health",
        tags=["health"],
        summary="Readiness: 503 while a dependency the service needs is gone",
        openapi_extra=route_scope("open"),
        responses={200: _REPORT, 503: _REPORT},
    )
    async def health() -> Response:
        report = await ready.report()
        return Response(
            msgspec.json.encode(report),
            status_code=200 if report.ready else 503,
            media_type="application/json",
        )

    @app.get(
        "/health/live",
        tags=["health"],
        summary="Liveness: 200 while the process serves",
        openapi_extra=route_scope("open"),
    )
    def live() -> dict[str, str]:
        return {"status": "ok"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            if schemas:
                document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document_errors(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


@contextlib.asynccontextmanager
async def announced(
    settings: Settings, kind: ServiceKind, public_url: str | None, *, apis: Sequence[str] = ()
) -> AsyncIterator[None]:
    """Keep a discovery entry (``kind``, at ``public_url``) while inside; none without a URL.

    ``apis`` names what else the service answers under ``/api/<name>`` besides its kind.

    The entry is kept by a background task that outlives outages of the bus (see
    :func:`aimesh.bus.announce`): a service starts whether or not the bus is there.
    """
    if public_url is None:
        yield
        return
    describe = describe_service(kind, kind, rest_url=public_url, apis=apis)
    task = asyncio.create_task(
        announce(settings, describe, interval_s=settings.serving.heartbeat_s), name="announce"
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

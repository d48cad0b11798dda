"""What every FastAPI service of the platform shares: the app's frame and its discovery entry.

The registry, the lake and the jobs service differ in their routes and what they open at
start; :func:`service_app` gives each the same frame (title, the JSON error handlers with
the platform's one status table, its router, ``/health``, ``/docs`` with Swagger UI served from
installed files), and :func:`announced` keeps the service's discovery entry while the app
runs, so that gateways proxy ``/api/<kind>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response

from aimesh.bus import announce, describe_service
from aimesh.config import Settings
from aimesh.errors import RouteNotFound
from aimesh.rest.docs import DOCS_ASSETS_URL, docs_asset, swagger_page
from aimesh.rest.errors import install_error_handlers

__all__ = ["announced", "service_app"]

ServiceKind = Literal["registry", "lake", "jobs"]


def service_app(
    *,
    title: str,
    description: str,
    router: APIRouter,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
) -> FastAPI:
    """A FastAPI app with the platform's error bodies, ``router``, ``GET /health``, ``/docs``.

    FastAPI's own ``/docs`` and ``/redoc`` load their scripts from a CDN; these pages load
    them from this server (:mod:`aimesh.rest.docs`), so the docs work offline.
    """
    app = FastAPI(
        title=title,
        version="0.1.0",
        description=description,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(router)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(
            swagger_page(f"{title} - Swagger UI", app.openapi_url or "/openapi.json")
        )

    @app.get(DOCS_ASSETS_URL + "{name}", include_in_schema=False)
    async def docs_assets(name: str) -> Response:
        asset = docs_asset(name)
        if asset is None:
            raise RouteNotFound(f"no docs asset {name!r}")
        headers = {key.decode(): value.decode() for key, value in asset.headers}
        return Response(asset.body, media_type=asset.content_type.decode(), headers=headers)

    @app.get("/health", tags=["health"], summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


@contextlib.asynccontextmanager
async def announced(
    settings: Settings, kind: ServiceKind, public_url: str | None
) -> AsyncIterator[None]:
    """Keep a discovery entry (``kind``, at ``public_url``) while inside; none without a URL.

    The entry is kept by a background task that outlives outages of the bus (see
    :func:`aimesh.bus.announce`): a service starts whether or not the bus is there.
    """
    if public_url is None:
        yield
        return
    describe = describe_service(kind, kind, rest_url=public_url)
    task = asyncio.create_task(
        announce(settings, describe, interval_s=settings.serving.heartbeat_s), name="announce"
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

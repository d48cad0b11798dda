"""What every FastAPI service of the platform shares: the app's frame and its discovery entry.

The registry, the lake and the jobs service differ in their routes and what they open at
start; :func:`service_app` gives each the same frame (title, the JSON error handlers with
the service's status table, its router, ``/health``), and :func:`announced` keeps the
service's discovery entry while the app runs, so that gateways proxy ``/api/<kind>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Literal

from fastapi import APIRouter, FastAPI

from aimesh.bus import announce, describe_service
from aimesh.config import Settings
from aimesh.rest.errors import install_error_handlers

__all__ = ["announced", "service_app"]

ServiceKind = Literal["registry", "lake", "jobs"]


def service_app(
    *,
    title: str,
    description: str,
    router: APIRouter,
    http_status: Mapping[str, int],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
) -> FastAPI:
    """A FastAPI app with the platform's error bodies, ``router`` and ``GET /health``."""
    app = FastAPI(title=title, version="0.1.0", description=description, lifespan=lifespan)
    install_error_handlers(app, http_status)
    app.include_router(router)

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

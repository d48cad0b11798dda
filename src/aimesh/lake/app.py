"""The lake as its own service: ``aimesh lake serve``, the REST API under ``/api/lake``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aimesh.bus import announce, describe_service
from aimesh.config import Settings
from aimesh.lake.api import HTTP_STATUS, LakeService, router
from aimesh.lake.lake import Lake
from aimesh.rest import install_error_handlers

__all__ = ["create_app"]


def create_app(
    settings: Settings, *, public_url: str | None = None, lake: Lake | None = None
) -> FastAPI:
    """The lake's FastAPI app over ``lake`` (default: the lake of ``settings``).

    With ``public_url``, the service keeps a discovery entry (kind ``lake``) so that
    gateways proxy ``/api/lake/...`` to it.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if public_url is not None:
            task = asyncio.create_task(_announce(settings, public_url), name="announce")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="aimesh lake",
        version="0.1.0",
        description="Versioned datasets (Delta Lake): list, schema, versions, SQL, ingest.",
        lifespan=lifespan,
    )
    app.state.lake = LakeService(
        lake=lake or Lake.from_settings(settings),
        max_query_rows=settings.lake.max_query_rows,
        max_upload_bytes=settings.lake.max_upload_bytes,
    )
    install_error_handlers(app, HTTP_STATUS)
    app.include_router(router)

    @app.get("/health", tags=["health"], summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _announce(settings: Settings, public_url: str) -> None:
    describe = describe_service("lake", "lake", rest_url=public_url)
    await announce(settings, describe, interval_s=settings.serving.heartbeat_s)

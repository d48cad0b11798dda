"""The jobs service: ``aimesh jobs serve``, the REST face of the job system."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from aimesh.bus import Bus, Registration, describe_service, open_bus
from aimesh.config import Settings
from aimesh.jobs.api import HTTP_STATUS, openapi_components, router
from aimesh.jobs.client import JobClient
from aimesh.jobs.data import JobData
from aimesh.rest import install_error_handlers

__all__ = ["create_app"]

log = logging.getLogger("aimesh.jobs")


def _registration(settings: Settings, bus: Bus, public_url: str) -> Registration:
    """A discovery entry (kind ``jobs``, name ``jobs``) so that gateways proxy /api/jobs."""
    describe = describe_service("jobs", "jobs", rest_url=public_url)
    return Registration(bus, describe, interval_s=settings.serving.heartbeat_s)


def create_app(settings: Settings, *, public_url: str | None = None) -> FastAPI:
    """The jobs service's FastAPI app, connecting to the bus when it starts.

    With ``public_url``, the service also keeps a discovery entry so gateways can find it.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with await open_bus(settings, name="jobs-api") as bus:
            jobs = await JobClient.open(bus, settings.jobs)
            app.state.jobs = jobs
            app.state.job_data = await JobData.open(bus)
            registration = None
            if public_url is not None:
                registration = _registration(settings, bus, public_url)
                await registration.start()
            try:
                yield
            finally:
                if registration is not None:
                    await registration.stop()
                await jobs.close()

    app = FastAPI(
        title="aimesh jobs",
        version="0.1.0",
        description="Asynchronous jobs: submit, follow (SSE), cancel.",
        lifespan=lifespan,
    )
    install_error_handlers(app, HTTP_STATUS)
    app.include_router(router)

    @app.get("/health", tags=["health"], summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def openapi() -> dict[str, Any]:
        # The bodies are msgspec types, which FastAPI does not describe: add their schemas.
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_components()
            )
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

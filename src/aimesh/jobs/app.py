"""The jobs service: ``aimesh jobs serve``, the REST face of the job system."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aimesh.bus import open_bus
from aimesh.config import Settings
from aimesh.jobs.api import STREAMS, openapi_components, router
from aimesh.jobs.client import JobClient
from aimesh.jobs.data import JobData
from aimesh.registry import KeyWatch
from aimesh.rest import Readiness, announced, bus_check, service_app

__all__ = ["create_app"]

log = logging.getLogger("aimesh.jobs")


def create_app(settings: Settings, *, public_url: str | None = None) -> FastAPI:
    """The jobs service's FastAPI app, connecting to the bus when it starts.

    With ``public_url``, the service also keeps a discovery entry so gateways can find it.
    It is ready (``/health``) while its bus connection is up: every route needs the bus.
    """
    readiness = Readiness()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with await open_bus(settings, name="jobs-api") as bus:
            readiness.require("bus", bus_check(lambda: bus))
            jobs = await JobClient.open(bus, settings.jobs)
            app.state.jobs = jobs
            app.state.job_data = await JobData.open(bus)
            try:
                async with announced(settings, "jobs", public_url):
                    yield
            finally:
                await jobs.close()

    # Served for real (announced): hear key events on the bus; in tests, the interval only.
    keys = KeyWatch(settings, events=public_url is not None)
    app = service_app(
        title="aimesh jobs",
        description="Asynchronous jobs: submit, follow (SSE), cancel, fetch results.",
        router=router,
        lifespan=lifespan,
        keyring=keys.keyring,
        background=[keys.run],
        auth=settings.auth,
        max_body_bytes=settings.jobs.max_request_bytes,
        max_concurrency=settings.jobs.max_concurrency,
        streams=STREAMS,
        schemas=openapi_components(),  # msgspec types, which FastAPI does not describe
        readiness=readiness,
    )
    return app

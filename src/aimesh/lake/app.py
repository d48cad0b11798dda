"""The lake as its own service: ``aimesh lake serve``, the REST API under ``/api/lake``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aimesh.config import Settings
from aimesh.lake.api import RAW_BODIES, LakeService, query_request_schema, router
from aimesh.lake.lake import Lake
from aimesh.registry import KeyWatch
from aimesh.rest import Readiness, announced, service_app

__all__ = ["create_app"]


def create_app(
    settings: Settings, *, public_url: str | None = None, lake: Lake | None = None
) -> FastAPI:
    """The lake's FastAPI app over ``lake`` (default: the lake of ``settings``).

    With ``public_url``, the service keeps a discovery entry (kind ``lake``) so that
    gateways proxy ``/api/lake/...`` to it. It is ready (``/health``) while the lake's
    store can be listed: its folder, or its bucket on object storage.
    """
    served = lake or Lake.from_settings(settings)
    readiness = Readiness()

    def store_reachable() -> None:
        served.tables.names()  # raises StoreUnavailable, saying why, when it cannot list

    readiness.require("store", store_reachable, blocking=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with announced(settings, "lake", public_url):
            yield

    # Served for real (announced): hear key events on the bus; in tests, the interval only.
    keys = KeyWatch(settings, events=public_url is not None)
    app = service_app(
        title="aimesh lake",
        description="Versioned datasets (Delta Lake): list, schema, versions, SQL, ingest.",
        router=router,
        lifespan=lifespan,
        keyring=keys.keyring,
        background=[keys.run],
        auth=settings.auth,
        max_body_bytes=settings.lake.max_request_bytes,
        max_concurrency=settings.lake.max_concurrency,
        raw_bodies=RAW_BODIES,
        schemas={"QueryRequest": query_request_schema(settings.lake.max_query_rows)},
        readiness=readiness,
    )
    app.state.lake = LakeService(
        lake=served,
        max_query_rows=settings.lake.max_query_rows,
        max_upload_bytes=settings.lake.max_upload_bytes,
    )
    return app

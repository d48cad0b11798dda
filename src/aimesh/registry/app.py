"""The registry as its own service: ``aimesh registry serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aimesh.config import Settings
from aimesh.registry.api import HTTP_STATUS, RAW_BODIES, router
from aimesh.registry.outbox import OutboxRelay
from aimesh.registry.service import LocalRegistry
from aimesh.rest import announced, service_app

log = logging.getLogger("aimesh.registry")


def create_app(
    settings: Settings, *, publish_events: bool = True, public_url: str | None = None
) -> FastAPI:
    """The registry's FastAPI app, opening its store when it starts and closing it after.

    With ``public_url``, the service also keeps a discovery entry so gateways can find it.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = LocalRegistry.from_settings(settings, actor="registry-api")
        app.state.registry = registry
        relay: asyncio.Task[None] | None = None
        if publish_events:
            outbox = OutboxRelay(registry.store, settings)
            registry.on_change = outbox.kick
            relay = asyncio.create_task(outbox.run(), name="outbox-relay")
        try:
            async with announced(settings, "registry", public_url):
                yield
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            registry.close()

    return service_app(
        title="aimesh registry",
        description="Models, immutable versions, aliases, metrics, lineage and artifacts.",
        router=router,
        http_status=HTTP_STATUS,
        lifespan=lifespan,
        auth=settings.auth,
        max_body_bytes=settings.registry.max_request_bytes,
        raw_bodies=RAW_BODIES,
    )

"""The registry as its own service: ``aimesh registry serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aimesh.bus import announce, describe_service
from aimesh.config import Settings
from aimesh.registry.api import HTTP_STATUS, router
from aimesh.registry.outbox import OutboxRelay
from aimesh.registry.service import LocalRegistry
from aimesh.rest import install_error_handlers

log = logging.getLogger("aimesh.registry")


async def _announce(settings: Settings, public_url: str) -> None:
    """Keep a discovery entry (kind ``registry``) so that gateways find this service."""
    describe = describe_service("registry", "registry", rest_url=public_url)
    await announce(settings, describe, interval_s=settings.serving.heartbeat_s)


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
        tasks: list[asyncio.Task[None]] = []
        if publish_events:
            relay = OutboxRelay(registry.store, settings)
            registry.on_change = relay.kick
            tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
        if public_url is not None:
            tasks.append(asyncio.create_task(_announce(settings, public_url), name="announce"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            registry.close()

    app = FastAPI(
        title="aimesh registry",
        version="0.1.0",
        description="Models, immutable versions, aliases, metrics, lineage and artifacts.",
        lifespan=lifespan,
    )
    install_error_handlers(app, HTTP_STATUS)
    app.include_router(router)

    @app.get("/health", tags=["health"], summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app

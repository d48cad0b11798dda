"""The registry as its own service: ``aimesh registry serve``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aimesh.config import Settings
from aimesh.registry.api import HTTP_STATUS, router
from aimesh.registry.outbox import OutboxRelay
from aimesh.registry.service import LocalRegistry
from aimesh.rest import install_error_handlers


def create_app(settings: Settings, *, publish_events: bool = True) -> FastAPI:
    """The registry's FastAPI app, opening its store when it starts and closing it after."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = LocalRegistry.from_settings(settings, actor="registry-api")
        app.state.registry = registry
        relay_task: asyncio.Task[None] | None = None
        if publish_events:
            relay = OutboxRelay(registry.store, settings)
            registry.on_change = relay.kick
            relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        try:
            yield
        finally:
            if relay_task is not None:
                relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay_task
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

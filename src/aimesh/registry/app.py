"""The registry as its own service: ``aimesh registry serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI

from aimesh.config import Settings
from aimesh.errors import AimeshError
from aimesh.registry.api import RAW_BODIES, router
from aimesh.registry.keys import KeyWatch
from aimesh.registry.kinds import record_kinds
from aimesh.registry.outbox import OutboxRelay
from aimesh.registry.records_api import record_router
from aimesh.registry.service import LocalRegistry
from aimesh.rest import Check, Readiness, announced, service_app

log = logging.getLogger("aimesh.registry")


def create_app(
    settings: Settings, *, publish_events: bool = True, public_url: str | None = None
) -> FastAPI:
    """The registry's FastAPI app, opening its store when it starts and closing it after.

    With ``public_url``, the service also keeps a discovery entry so gateways can find it,
    naming the ``/api/<plural>`` of every record kind registered now, which it serves too.
    It is ready (``/health``) while its database answers; the bus is not needed (events
    wait in the outbox).
    """
    readiness = Readiness()
    kinds = record_kinds()
    routes = APIRouter()
    routes.include_router(router)
    for kind in kinds:
        routes.include_router(record_router(kind))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = LocalRegistry.from_settings(settings, actor="registry-api")
        app.state.registry = registry
        readiness.require("database", database_check(registry.store.engine), blocking=True)
        app.state.keys = keys  # its own key changes take effect here at once
        tasks: list[asyncio.Task[None]] = []
        if publish_events:
            outbox = OutboxRelay(registry.store, settings)
            registry.on_change = outbox.kick
            tasks.append(asyncio.create_task(outbox.run(), name="outbox-relay"))
        if settings.registry.gc_interval_s > 0:
            tasks.append(
                asyncio.create_task(
                    collect_garbage_every(registry, settings.registry.gc_interval_s),
                    name="registry-gc",
                )
            )
        try:
            apis = [k.plural for k in kinds]
            async with announced(settings, "registry", public_url, apis=apis):
                yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            registry.close()

    # Served for real (announced): hear key events on the bus; in tests, the interval only.
    keys = KeyWatch(settings, events=public_url is not None)
    return service_app(
        title="aimesh registry",
        description="Models, immutable versions, aliases, metrics, lineage, artifacts, "
        "API keys, and records of every registered kind.",
        router=routes,
        lifespan=lifespan,
        keyring=keys.keyring,
        background=[keys.run],
        auth=settings.auth,
        max_body_bytes=settings.registry.max_request_bytes,
        max_concurrency=settings.registry.max_concurrency,
        raw_bodies=RAW_BODIES,
        readiness=readiness,
    )


def database_check(engine: sa.Engine) -> Check:
    """A round trip to the database; for SQLite, also that its file is still there.

    (A SQLite connection keeps working on a file deleted under it, which no later process
    would find: that is a registry about to lose what it writes.)
    """
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    file = Path(path) if path and path != ":memory:" and not path.startswith("file:") else None

    def check() -> str | None:
        if file is not None and not file.exists():
            return f"the database file {file} is gone"
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as exc:
            return f"cannot reach the database: {str(exc).splitlines()[0]}"
        return None

    return check


async def collect_garbage_every(registry: LocalRegistry, interval_s: float) -> None:
    """Collect the registry's garbage now, then every ``interval_s`` seconds, until cancelled.

    A failed round is logged and the next one tried: garbage waits, serving does not.
    """
    while True:
        try:
            report = await asyncio.to_thread(registry.collect_garbage)
        except (AimeshError, OSError) as exc:
            log.warning("garbage collection failed: %s", exc)
        else:
            if report.removed:
                log.info(
                    "garbage collection removed %d file(s), freeing %d bytes",
                    len(report.removed),
                    report.bytes_freed,
                )
        await asyncio.sleep(interval_s)

"""Publishing the registry's recorded changes on the bus (the outbox pattern).

A change and its event row commit together in SQL (see ``store.py``); this module moves
unpublished rows to the bus. Each event carries its row's id as the JetStream message id,
so two relays racing over one database (a registry service and a CLI) publish it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread

from aimesh.bus import (
    Bus,
    RegistryEvent,
    declare_topology,
    ensure_bus,
    open_bus,
    publish_event,
)
from aimesh.config import Settings
from aimesh.errors import AimeshError
from aimesh.registry.store import RegistryStore
from aimesh.registry.types import HistoryEntry

log = logging.getLogger("aimesh.registry.outbox")


def to_event(event_id: str, entry: HistoryEntry) -> RegistryEvent:
    """The bus event for one recorded change."""
    return RegistryEvent(
        id=event_id,
        kind=entry.kind,
        action=entry.action,  # type: ignore[arg-type]
        model=entry.model,
        version=entry.version,
        alias=entry.alias,
        actor=entry.actor,
        at=entry.at,
        data=dict(entry.data),
    )


async def publish_pending(store: RegistryStore, bus: Bus) -> int:
    """Publish every unpublished change, oldest first; return how many were published."""
    total = 0
    while True:
        pending = await anyio.to_thread.run_sync(store.unpublished_events)
        if not pending:
            return total
        done: list[str] = []
        try:
            for event_id, entry in pending:
                await publish_event(bus, to_event(event_id, entry))
                done.append(event_id)
        finally:
            await anyio.to_thread.run_sync(store.mark_published, done)
        total += len(done)


async def _flush(store: RegistryStore, settings: Settings) -> int:
    async with await open_bus(settings, name="aimesh-cli") as bus:
        await declare_topology(bus)
        return await publish_pending(store, bus)


def flush_outbox(store: RegistryStore, settings: Settings) -> int:
    """Publish pending changes from a short-lived process (the CLI), starting the bus if needed."""
    return asyncio.run(_flush(store, settings))


class OutboxRelay:
    """Runs inside the registry service: publishes changes as they happen.

    :meth:`kick` may be called from any thread (request handlers run in a pool). While the
    bus is down the rows wait in the outbox, and the relay retries with backoff.
    """

    def __init__(self, store: RegistryStore, settings: Settings, *, idle_s: float = 5.0) -> None:
        self._store = store
        self._settings = settings
        self._idle_s = idle_s
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def kick(self) -> None:
        """Ask the relay to publish now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Publish until cancelled."""
        self._loop = asyncio.get_running_loop()
        backoff = 0.5
        warned = False
        url: str | None = None  # found (or started) once; see open_bus
        while True:
            try:
                if url is None:
                    url = await asyncio.to_thread(ensure_bus, self._settings)
                async with await open_bus(self._settings, name="aimesh-registry", url=url) as bus:
                    await declare_topology(bus)
                    log.info("publishing registry events on %s", bus.url)
                    backoff, warned = 0.5, False
                    while True:
                        await publish_pending(self._store, bus)
                        await self._wait()
            except AimeshError as exc:
                # Whatever goes wrong with the bus, the registry keeps serving; events wait.
                if not warned:
                    log.warning("bus unavailable, events wait in the outbox: %s", exc.message)
                    warned = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._idle_s)
        self._wake.clear()

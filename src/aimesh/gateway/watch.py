"""Following the bus: the discovery bucket into the routing table, registry events into the catalog.

The discovery watch starts with the bucket's current keys (the initial listing), then
applies every put, delete, purge and expiry marker as it happens: nothing is polled. A
local sweep also forgets instances not refreshed for a while, for markers missed while the
bus was away; it pauses while the bus is disconnected, so that an outage of the bus is not
taken for the death of every instance. After each reconnection the watch starts afresh:
a restarted embedded bus keeps no discovery bucket (it is in memory), so the old watch would
hear nothing more, and the instances, which put their keys again, would age out of the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors

from aimesh.bus import BUCKETS, DISCOVERY_BUCKET, Bus, ServiceInstance, subscribe_events
from aimesh.bus import discovery_bucket as open_discovery_bucket
from aimesh.errors import AimeshError
from aimesh.gateway.catalog import RegistryCatalog
from aimesh.gateway.routing import RoutingTable
from aimesh.gateway.traffic import TrafficTable
from aimesh.registry import ROLLOUTS
from aimesh.rollouts import FIGURES_EVERY_S, FIGURES_SUBJECT, FigureBook

__all__ = [
    "TRAFFIC_REFRESH_S",
    "DiscoveryWatch",
    "forget_on_registry_events",
    "publish_figures",
    "refresh_traffic",
]

TRAFFIC_REFRESH_S = 30.0
"""How often a gateway reads every traffic policy, besides following their events."""

log = logging.getLogger("aimesh.gateway")

_DISCOVERY_TTL_S = next(b.ttl_s for b in BUCKETS if b.name == DISCOVERY_BUCKET) or 6.0
_SWEEP_S = 1.0
_DELETED = frozenset({"DEL", "PURGE"})


class DiscoveryWatch:
    """Keeps a :class:`RoutingTable` in step with the discovery bucket until cancelled."""

    def __init__(
        self,
        bus: Bus,
        table: RoutingTable,
        *,
        on_change: Callable[[], None] | None = None,
        stale_after_s: float = 2 * _DISCOVERY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._table = table
        self._on_change = on_change
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._decoder = msgspec.json.Decoder(ServiceInstance)
        self.ready = asyncio.Event()
        """Set once the initial listing is in the table."""
        self._reconnected = asyncio.Event()

    async def run(self) -> None:
        """Watch (and sweep) forever; after a failure or a reconnection, watch afresh."""
        sweeper = asyncio.create_task(self._sweep(), name="discovery-sweep")
        backoff = 0.5
        try:
            while True:
                self._reconnected.clear()
                watch = asyncio.create_task(self._watch(), name="discovery-watch-stream")
                again = asyncio.create_task(self._reconnected.wait())
                try:
                    await asyncio.wait({watch, again}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    again.cancel()
                    watch.cancel()
                    await asyncio.wait({watch})  # its end, whatever it was (read below)
                if not watch.cancelled():
                    try:
                        watch.result()
                    except (AimeshError, nats.errors.Error, TimeoutError) as exc:
                        log.warning("discovery watch failed: %s; watching again", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                else:
                    log.info("reconnected to the bus: watching discovery afresh")
                    backoff = 0.5
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _watch(self) -> None:
        kv = await open_discovery_bucket(self._bus)
        watcher = await kv.watchall()
        listed: set[str] | None = set()  # keys of the initial listing, until it ends
        try:
            async for entry in watcher:
                if entry is None:  # the initial listing is complete
                    if listed is not None:
                        self._reconcile(listed)
                        listed = None
                        self.ready.set()
                    continue
                before = self._table.generation
                if entry.operation in _DELETED or not entry.value:
                    self._table.remove(entry.key)
                else:
                    self._put(entry.key, entry.value)
                    if listed is not None:
                        listed.add(entry.key)
                if self._on_change is not None and self._table.generation != before:
                    self._on_change()
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError, AttributeError):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _put(self, key: str, value: bytes) -> None:
        try:
            instance = self._decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("skipping a malformed discovery entry %s", key)
            return
        try:
            self._table.put(instance, self._clock())
        except ValueError as exc:
            log.warning("skipping discovery entry %s: %s", key, exc)

    def _reconcile(self, listed: set[str]) -> None:
        # A fresh watch lists what exists now; what the table holds beyond that left meanwhile.
        before = self._table.generation
        for key in self._table.keys() - listed:
            self._table.remove(key)
        if self._on_change is not None and self._table.generation != before:
            self._on_change()

    async def _sweep(self) -> None:
        was_connected = True
        reconnections = self._bus.reconnections
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = self._clock()
            connected = self._bus.connected
            # Counted, not only seen: a bus restarted within a sweep is a reconnection too.
            back = connected and self._bus.reconnections != reconnections
            if connected and (back or not was_connected):
                reconnections = self._bus.reconnections
                self._table.touch_all(now)  # silence during the outage was not death
                self._reconnected.set()
            elif connected:
                before = self._table.generation
                self._table.expire(now, self._stale_after_s)
                if self._on_change is not None and self._table.generation != before:
                    self._on_change()
            was_connected = connected


async def forget_on_registry_events(
    bus: Bus, catalog: RegistryCatalog, traffic: TrafficTable | None = None
) -> None:
    """Drop the catalog's cached answers about a model whenever the registry changes it,
    and fetch a model's traffic policy again when its rollout record changes. Each time
    the subscription starts (again), every policy is read afresh: events published while
    it was away are not replayed."""
    backoff = 0.5
    while True:
        try:
            async with await subscribe_events(bus) as events:
                backoff = 0.5
                if traffic is not None:
                    await _load(traffic)
                async for event in events:
                    if event.kind == ROLLOUTS.name and traffic is not None:
                        traffic.refresh(event.model)
                    else:
                        catalog.forget(event.model)
        except (AimeshError, nats.errors.Error, TimeoutError) as exc:
            log.warning("not following registry events: %s; trying again", exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


async def publish_figures(bus: Bus, book: FigureBook, *, every_s: float = FIGURES_EVERY_S) -> None:
    """Publish the gateway's live figures every ``every_s`` while it counts any (core NATS:
    a report missed is superseded by the next, each one being cumulative)."""
    subject = f"{FIGURES_SUBJECT}.{_token(book.gateway)}"
    while True:
        await asyncio.sleep(every_s)
        if not book.empty and bus.connected:
            try:
                await bus.nc.publish(subject, book.encode())
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("figures not published: %s", exc)


def _token(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "gateway"


async def _load(traffic: TrafficTable) -> None:
    try:
        await traffic.load()
    except AimeshError as exc:
        log.warning("traffic policies not read (%s); the next refresh will", exc.message)


async def refresh_traffic(traffic: TrafficTable, *, every_s: float = TRAFFIC_REFRESH_S) -> None:
    """Read every traffic policy again every ``every_s``: mends what a lost event left."""
    while True:
        await asyncio.sleep(every_s)
        await _load(traffic)

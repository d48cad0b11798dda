"""Hosting a model by reference, following its alias: the hot swap.

:class:`ModelHost` serves ``name@alias`` (or ``name@3``, or ``name@latest``). When the
registry moves the alias, the host loads the new version beside the old one, switches with
one assignment, lets requests already running finish on the old one, then frees it. A
model service hosts one; a sidecar can host one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from aimesh import runtimes
from aimesh.bus import Bus, RegistryEvent, subscribe_events
from aimesh.errors import AimeshError, BusUnavailable, InvalidRequest, Unavailable
from aimesh.protocol import whole_number
from aimesh.registry import LATEST, ModelVersion, Registry, check_model_name
from aimesh.serving.batching import BatchStats
from aimesh.serving.model import BatchingOptions, ServedModel, load_model

log = logging.getLogger("aimesh.serving")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``name@ref`` where ref is a version number, an alias, or ``latest``."""

    name: str
    ref: str = LATEST

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Read ``fraud``, ``fraud@3`` or ``fraud@champion``."""
        name, _, ref = text.partition("@")
        check_model_name(name)
        if _ and not ref:
            raise InvalidRequest(f"{text!r}: nothing after '@'")
        return cls(name, ref or LATEST)

    @property
    def pinned(self) -> bool:
        """Whether the reference names a fixed version (nothing to follow)."""
        return whole_number(self.ref) is not None

    def __str__(self) -> str:
        return f"{self.name}@{self.ref}"


def settle_heap() -> None:
    """Collect garbage, then freeze what is left: long-lived objects out of the GC's sight.

    Called once the model is loaded (so that full collections under load stay short) and
    again after each swap: the retired version was frozen with everything else, and its
    cycles would never be collected unless the heap is unfrozen first.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHost:
    """Keeps the version a reference points at loaded, swapping without dropping a request."""

    def __init__(
        self,
        registry: Registry,
        ref: ModelRef,
        *,
        batching: BatchingOptions,
        drain_timeout_s: float = 20.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_swap: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.registry = registry
        self.ref = ref
        self.batching = batching
        self.drain_timeout_s = drain_timeout_s
        self._on_batch = on_batch
        self._on_swap = on_swap
        self._current: ServedModel | None = None
        self._swap_lock = asyncio.Lock()

    @property
    def current(self) -> ServedModel:
        """The model answering new requests."""
        if self._current is None:
            raise Unavailable(f"{self.ref} is not loaded yet")
        return self._current

    @property
    def ready(self) -> bool:
        """Whether a version is loaded."""
        return self._current is not None

    async def start(self) -> ServedModel:
        """Load the version the reference points at now."""
        await self.refresh()
        return self.current

    async def refresh(self) -> None:
        """Resolve the reference again; swap if it points somewhere new."""
        async with self._swap_lock:
            version = await anyio.to_thread.run_sync(
                self.registry.get_version, self.ref.name, self.ref.ref
            )
            if self._current is not None and self._current.version.version == version.version:
                return
            await self._swap_to(version)

    async def _swap_to(self, version: ModelVersion) -> None:
        new = await anyio.to_thread.run_sync(self._load, version)
        old, self._current = self._current, new  # the switch: new requests go to `new` now
        if old is not None:
            log.info("swapped %s: version %s -> %s", self.ref, old.version_label, new.version_label)
        if self._on_swap is not None:
            self._on_swap(new)
        if old is not None:
            if not await old.drain(self.drain_timeout_s):
                log.warning(
                    "%s: %d request(s) still running on the old version after %.0fs",
                    self.ref,
                    old.in_flight,
                    self.drain_timeout_s,
                )
            await old.close()
            del old
            settle_heap()

    def _load(self, version: ModelVersion) -> ServedModel:
        path = self.registry.fetch_artifact(version)

        def runtime() -> runtimes.Runtime:
            return runtimes.load_runtime(
                version.framework,
                path,
                trusted=version.trusted,
                trusted_types=version.trusted_types,
            )

        return load_model(version, runtime, batching=self.batching, on_batch=self._on_batch)

    def _relevant(self, event: RegistryEvent) -> bool:
        if event.model != self.ref.name or self.ref.pinned:
            return False
        if self.ref.ref == LATEST:
            return event.kind == "version"
        return event.kind == "alias" and event.alias == self.ref.ref

    async def follow(self, bus: Bus) -> None:
        """React to the registry's events for this model until cancelled."""
        if self.ref.pinned:
            return
        subject = f"aimesh.events.registry.*.*.{self.ref.name}"
        async with await subscribe_events(bus, subject) as events:
            await self._refresh_logged()  # catch up on whatever changed before we listened
            async for event in events:
                if self._relevant(event):
                    await self._refresh_logged()
        raise BusUnavailable("the event subscription ended")

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except AimeshError as exc:
            # Keep serving what is loaded: a bad new version must not take the service down.
            log.error("cannot switch %s: %s", self.ref, exc.message, extra={"code": exc.code})

    async def close(self) -> None:
        """Drain and release the loaded model."""
        current, self._current = self._current, None
        if current is not None:
            await current.drain(self.drain_timeout_s)
            with contextlib.suppress(Exception):
                await current.close()

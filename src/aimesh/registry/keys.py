"""How every service learns the API keys: from the registry, kept current by its events.

A :class:`KeyWatch` holds a service's :class:`~aimesh.auth.Keyring`: the static keys of
``auth.keys``, the service credential, and the keys stored in the registry database, read

- from the database itself when this process has it (``registry.database_url``, or the
  home's SQLite file when no ``registry.url`` is configured),
- else from the registry service at ``registry.url`` (``GET /api/registry/keys/digests``,
  with the service credential);

once at start, again on every key event of the bus (``aimesh.events.registry.key.>``),
and every ``auth.reload_s`` whatever the bus says (a revocation missed while the bus was
away still takes effect). Until the first read succeeds the keyring refuses every caller
without a static key or the service credential: a service that cannot read its keys does
not open up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from aimesh.auth import FailedAttempts, KeyEntry, Keyring
from aimesh.bus import KEY_SUBJECTS, ensure_bus, open_bus, subscribe_events
from aimesh.config import Settings
from aimesh.errors import AimeshError
from aimesh.observability import cancel_and_wait
from aimesh.registry.interface import service_credential
from aimesh.registry.store import RegistryStore, create_engine

__all__ = ["KeyWatch", "static_keys"]

log = logging.getLogger("aimesh.auth")

Loader = Callable[[], list[KeyEntry]]


def static_keys(settings: Settings) -> list[KeyEntry]:
    """The keys of ``auth.keys``."""
    return [
        KeyEntry(k.name, k.sha256, frozenset(k.scopes), k.rate_per_s, k.burst)
        for k in settings.auth.keys
    ]


def _loader(settings: Settings) -> Loader:
    """Where this process reads the stored keys: the database, else the registry service."""
    if settings.registry.database_url or not settings.registry.url:
        url = settings.registry_database_url
        sqlite_file = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        store: list[RegistryStore] = []

        def from_database() -> list[KeyEntry]:
            if sqlite_file is not None and not sqlite_file.exists():
                return []  # no registry has run in this home yet: no keys
            if not store:
                store.append(RegistryStore(create_engine(url)))
            return store[0].key_entries()

        return from_database

    def from_service() -> list[KeyEntry]:
        from aimesh.registry.client import RegistryClient

        assert settings.registry.url is not None
        client = RegistryClient(
            settings.registry.url,
            timeout=settings.registry.request_timeout_s,
            cache_dir=settings.cache_dir,
            api_key=service_credential(settings),
        )
        try:
            return client.key_entries()
        finally:
            client.close()

    return from_service


class KeyWatch:
    """A service's keyring, kept current; see the module's docstring."""

    def __init__(
        self, settings: Settings, *, load: Loader | None = None, events: bool = True
    ) -> None:
        """``events=False``: reload on the interval only (never connects to the bus)."""
        self.settings = settings
        self.events = events
        auth = settings.auth
        self.keyring = Keyring(
            static=static_keys(settings),
            service_key=service_credential(settings),
            stored=None,
            attempts=FailedAttempts(auth.max_failures, auth.failure_window_s),
        )
        self._load = load or _loader(settings)
        self._failing = False
        self.reload_now()

    def reload_now(self) -> bool:
        """Read the stored keys now (blocking); False, logged, when they cannot be read."""
        try:
            self.keyring.replace(self._load())
        except AimeshError as exc:
            if not self._failing:  # once per outage, not once per retry
                log.warning("cannot read the API keys (%s); keeping the ones known", exc.message)
            self._failing = True
            return False
        if self._failing:
            log.info("API keys read again")
        self._failing = False
        return True

    async def reload(self) -> bool:
        """:meth:`reload_now` off the event loop."""
        return await anyio.to_thread.run_sync(self.reload_now)

    async def run(self) -> None:
        """Keep the keys current until cancelled: on key events, and every ``auth.reload_s``."""
        tasks = [asyncio.create_task(self._every_interval(), name="keys-interval")]
        if self.events:
            tasks.append(asyncio.create_task(self._on_events(), name="keys-events"))
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks, 5.0)

    async def _every_interval(self) -> None:
        while True:
            # Sooner while the keys were never read: a service must not stay shut for long.
            await asyncio.sleep(self.settings.auth.reload_s if self.keyring.loaded else 1.0)
            await self.reload()

    async def _on_events(self) -> None:
        backoff = 0.5
        url: str | None = None
        while True:
            try:
                # The bus is found (or started) once; later rounds connect to that address
                # (see open_bus), with the home's credentials.
                if url is None:
                    url = await asyncio.to_thread(ensure_bus, self.settings)
                async with (
                    await open_bus(self.settings, name="keys", url=url) as bus,
                    await subscribe_events(bus, KEY_SUBJECTS) as events,
                ):
                    backoff = 0.5
                    await self.reload()  # whatever changed before we listened
                    async for event in events:
                        log.info("API key %s %s; reading the keys again", event.model, event.action)
                        await self.reload()
            except AimeshError as exc:
                log.debug("not hearing key events: %s; trying again", exc.message)
            except Exception as exc:  # the bus client's own errors: keep trying, never die
                log.debug("not hearing key events: %s; trying again", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

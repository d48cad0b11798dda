"""The registry as the gateway's catalog: does a model, version or alias exist?

Asked only when no instance can take a request (and to resolve an alias no instance
follows), so it never sits on the hot path. Answers, found or not, are kept for a couple of
seconds and forgotten sooner when a registry event names the model; concurrent questions
about the same thing share one call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from aimesh.config import Settings
from aimesh.errors import AimeshError, RecordNotFound, StoreUnavailable
from aimesh.registry import ROLLOUTS, Record, Registry, open_registry
from aimesh.rollouts import Rollout

__all__ = ["RegistryCatalog"]

log = logging.getLogger("aimesh.gateway")

_T = TypeVar("_T")
_PAGE = 500
CACHE_S = 2.0
# A gateway asks quick questions: a registry that takes longer is as good as absent.
_REQUEST_TIMEOUT_S = 5.0


class RegistryCatalog:
    """A :class:`~aimesh.gateway.routing.ModelCatalog` over a :class:`Registry`.

    The registry is the service discovery found (:meth:`use`), else ``registry.url`` from
    the settings, else this home's local store: whichever :func:`open_registry` opens.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._url: str | None = None
        self._registry: Registry | None = None
        self._lock = threading.Lock()  # the registry is opened by whichever thread asks first
        self._answers: dict[tuple[str, str | None], tuple[float, asyncio.Future[str | None]]] = {}

    def use(self, url: str | None) -> None:
        """Ask the registry service at ``url`` from now on (``None``: the configured one)."""
        if url == self._url:
            return
        self._url = url
        self._answers.clear()
        self.close()

    def forget(self, name: str) -> None:
        """Drop cached answers about a model (it changed in the registry)."""
        for key in [k for k in self._answers if k[0] == name]:
            del self._answers[key]

    def close(self) -> None:
        """Close the registry connection or store (it reopens when next asked)."""
        with self._lock:
            old, self._registry = self._registry, None
        if old is not None:
            old.close()

    async def lookup(self, name: str, ref: str | None) -> str | None:
        """See :meth:`~aimesh.gateway.routing.ModelCatalog.lookup`."""
        key = (name, ref)
        now = self._clock()
        cached = self._answers.get(key)
        if cached is None or cached[0] < now:
            if len(self._answers) > 4096:
                self._answers = {k: v for k, v in self._answers.items() if v[0] >= now}
            future = asyncio.ensure_future(self._ask(name, ref))
            future.add_done_callback(_retrieve)
            cached = (now + CACHE_S, future)
            self._answers[key] = cached
        return await asyncio.shield(cached[1])

    async def _ask(self, name: str, ref: str | None) -> str | None:
        return await asyncio.to_thread(self._ask_sync, name, ref)

    def _ask_sync(self, name: str, ref: str | None) -> str | None:
        registry = self._open()
        try:
            if ref is None:
                registry.get_model(name)
                return None
            return str(registry.get_version(name, ref).version)
        except StoreUnavailable as exc:
            # Its message names the registry's internal address: that stays in the log.
            raise StoreUnavailable("the registry cannot be asked now; try again shortly") from exc
        except AimeshError:
            raise
        except Exception as exc:  # a store failure of any kind means: cannot be asked now
            raise StoreUnavailable("the registry cannot be asked now; try again shortly") from exc

    async def rollout(self, model: str) -> tuple[int, Rollout] | None:
        """``model``'s stored traffic policy with its revision, or None (never cached)."""
        return await asyncio.to_thread(self._rollout_sync, model)

    async def rollouts(self) -> list[tuple[int, Rollout]]:
        """Every stored traffic policy with its revision."""
        return await asyncio.to_thread(self._rollouts_sync)

    def _rollout_sync(self, model: str) -> tuple[int, Rollout] | None:
        try:
            record = self._guarded(lambda registry: registry.get_record(ROLLOUTS, model))
        except RecordNotFound:
            return None
        return record.revision, record.spec

    def _rollouts_sync(self) -> list[tuple[int, Rollout]]:
        found: list[tuple[int, Rollout]] = []
        after: str | None = None
        while True:
            page = self._guarded(partial(_page, after=after))
            found += [(record.revision, record.spec) for record in page]
            if len(page) < _PAGE:
                return found
            after = page[-1].name

    def _guarded(self, ask: Callable[[Registry], _T]) -> _T:
        registry = self._open()
        try:
            return ask(registry)
        except AimeshError:
            raise
        except Exception as exc:  # a store failure of any kind means: cannot be asked now
            raise StoreUnavailable("the registry cannot be asked now; try again shortly") from exc

    def _open(self) -> Registry:
        with self._lock:
            return self._registry or self._open_locked()

    def _open_locked(self) -> Registry:
        if self._registry is None:
            registry = self._settings.registry
            url = self._url or registry.url
            settings = self._settings.model_copy(
                update={
                    "registry": registry.model_copy(
                        update={
                            "url": url,
                            "request_timeout_s": min(
                                registry.request_timeout_s, _REQUEST_TIMEOUT_S
                            ),
                        }
                    )
                }
            )
            self._registry = open_registry(settings)
            log.info("asking the registry %s about unserved models", url or "in this home")
        return self._registry


def _page(registry: Registry, *, after: str | None) -> list[Record[Rollout]]:
    return registry.list_records(ROLLOUTS, limit=_PAGE, after=after)


def _retrieve(future: asyncio.Future[str | None]) -> None:
    # Every waiter may have gone (cancelled); the answer is still cached, not an orphan error.
    if not future.cancelled():
        future.exception()

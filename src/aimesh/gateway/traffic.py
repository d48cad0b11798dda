"""Every model's traffic policy, as this gateway applies it: kept current from the registry.

:class:`TrafficTable` holds one compiled policy (:class:`~aimesh.rollouts.Arms`) per model
that has one; the hot path reads it with one dict lookup. It is filled from the registry
when the gateway starts (and after each reconnection to the bus), and a registry event
about a model's rollout makes it fetch that model's policy again at once, so a change is
applied within a second. Fetches of one model never overtake each other: a record older
than the one held (a lower revision) is ignored, and a refresh asked for while one runs
runs again after it. A periodic full refresh mends what a lost event would leave stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from aimesh.errors import AimeshError
from aimesh.rollouts import Arms, Rollout

__all__ = ["Fetch", "FetchAll", "TrafficTable"]

log = logging.getLogger("aimesh.gateway")

Fetch = Callable[[str], Awaitable[tuple[int, Rollout] | None]]
"""A model's stored policy with its revision, or None when it has none."""
FetchAll = Callable[[], Awaitable[Iterable[tuple[int, Rollout]]]]
"""Every stored policy with its revision."""


class TrafficTable:
    """The compiled traffic policy of each model that has an active one."""

    def __init__(self, fetch: Fetch, fetch_all: FetchAll) -> None:
        self._fetch = fetch
        self._fetch_all = fetch_all
        self._arms: dict[str, Arms] = {}
        self._revisions: dict[str, int] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self.generation = 0
        """Increases with every change applied."""

    def get(self, model: str) -> Arms | None:
        """The model's compiled policy, if it has an active one."""
        return self._arms.get(model)

    def models(self) -> dict[str, Arms]:
        """Every model with an active policy."""
        return dict(self._arms)

    def apply(self, revision: int, rollout: Rollout | None, model: str) -> bool:
        """Hold ``rollout`` (None: the model has none now) unless an equal or newer revision
        was seen already; revisions only grow, across a deletion too. Returns whether the
        policy applied changed."""
        if rollout is None:
            if self._arms.pop(model, None) is None:
                return False
        else:
            if revision <= self._revisions.get(model, 0):
                return False
            self._revisions[model] = revision
            arms = Arms(rollout)
            if arms.splits or arms.shadow is not None:
                self._arms[model] = arms
            elif self._arms.pop(model, None) is None:
                return False
        self.generation += 1
        log.info("traffic policy of %s: %s", model, _describe(rollout))
        return True

    async def load(self) -> None:
        """Read every policy from the registry; models whose policy is gone lose theirs."""
        found = {
            rollout.model: (revision, rollout) for revision, rollout in await self._fetch_all()
        }
        for model in set(self._arms) - set(found):
            self.apply(0, None, model)
        for model, (revision, rollout) in found.items():
            self.apply(revision, rollout, model)

    def refresh(self, model: str) -> None:
        """Fetch ``model``'s policy again soon (a registry event named it)."""
        if model in self._running:
            self._again.add(model)
            return
        task = asyncio.get_running_loop().create_task(self._refresh(model), name=f"traffic-{model}")
        self._running[model] = task

    async def _refresh(self, model: str) -> None:
        try:
            while True:
                self._again.discard(model)
                try:
                    found = await self._fetch(model)
                except AimeshError as exc:
                    log.warning("traffic policy of %s not read: %s", model, exc.message)
                    return  # the periodic load mends it
                if found is None:
                    self.apply(0, None, model)
                else:
                    self.apply(found[0], found[1], model)
                if model not in self._again:
                    return
        finally:
            self._running.pop(model, None)

    async def close(self) -> None:
        """Stop fetches under way."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _describe(rollout: Rollout | None) -> str:
    if rollout is None:
        return "none"
    weights = ", ".join(f"{v}={w}%" for v, w in sorted(rollout.weights().items()))
    return f"{rollout.policy.type} ({rollout.status.state}) {weights}".rstrip()

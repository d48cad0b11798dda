"""Shadow traffic: a copy of a live call sent to a shadow version, compared, never returned.

When a model's policy is a shadow (:class:`~aimesh.rollouts.Shadow`), the core's plan
names a shadow target for a share of the calls. :meth:`Shadows.copy` sends the copy in a
task of its own (the client's answer never waits for it, nor depends on it: a shadow that
fails or hangs changes nothing the client sees), then compares its answer with the live
one the adapter hands over (:func:`~aimesh.rollouts.shadow.compare_bodies`): agreement on
the top class and the mean absolute difference, counted in the live figures of the shadow
version, with its own requests, errors and latency. At most ``limit`` copies are in flight
per gateway; past it a copy is dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aimesh.errors import AimeshError, UpstreamTimeout
from aimesh.gateway.core import ModelCore
from aimesh.gateway.routing import Target
from aimesh.gateway.upstream import Exchange
from aimesh.rollouts import FigureBook, OutcomeClass, class_of
from aimesh.rollouts.shadow import compare_bodies

__all__ = ["SHADOW_LIMIT", "Shadows"]

log = logging.getLogger("aimesh.gateway")

SHADOW_LIMIT = 64
"""Shadow copies in flight per gateway at most."""
_LIVE_WAIT_S = 60.0  # the live answer is handed over when the client's call ends

Answer = tuple[int, bytes]
"""An HTTP status and the whole body."""


class Shadows:
    """Sends shadow copies and compares their answers; see the module."""

    def __init__(self, core: ModelCore, figures: FigureBook, *, limit: int = SHADOW_LIMIT) -> None:
        self._core = core
        self._figures = figures
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def copy(
        self, model: str, target: Target, exchange: Exchange[Answer]
    ) -> asyncio.Future[Answer | None] | None:
        """Send a copy to ``target`` (``exchange`` makes the call and reads the answer).

        Returns the future to hand the live answer to (None: no answer to compare), or None
        when the copy was dropped (too many in flight).
        """
        version = target.version or ""
        if len(self._tasks) >= self._limit:
            self._figures.counts(model, version).dropped += 1
            return None
        live: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(model, version, target, exchange, live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return live

    async def _run(
        self,
        model: str,
        version: str,
        target: Target,
        exchange: Exchange[Answer],
        live: asyncio.Future[Answer | None],
    ) -> None:
        started = time.perf_counter()
        try:
            status, body = await self._core.call("shadow", target, exchange)
        except AimeshError as exc:
            failure: OutcomeClass = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream"
            self._figures.count(model, version, failure, time.perf_counter() - started)
            log.debug("shadow copy to %s@%s failed: %s", model, version, exc.message)
            return
        self._figures.count(model, version, class_of(status), time.perf_counter() - started)
        if status != 200:
            return
        try:
            answer = await asyncio.wait_for(asyncio.shield(live), _LIVE_WAIT_S)
        except TimeoutError:
            return
        if answer is None or answer[0] != 200:
            return
        comparison = compare_bodies(answer[1], body)  # bodies are bounded (1 MiB): quick
        if comparison is not None:
            self._figures.compared(model, version, comparison.agreed, comparison.mean_abs_diff)

    async def close(self) -> None:
        """Stop the copies under way."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

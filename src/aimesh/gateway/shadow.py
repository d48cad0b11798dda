"""Shadow traffic: a copy of a live call sent to a shadow version, compared, never returned.

When a model's policy is a shadow (:class:`~aimesh.rollouts.Shadow`), the core's plan
names a shadow target for a share of the calls. :meth:`Shadows.copy` sends the copy in a
task of its own (the client's answer never waits for it, nor depends on it: a shadow that
fails or hangs changes nothing the client sees), then compares its answer with the live
one the adapter hands over (:func:`~aimesh.rollouts.compare_bodies`): agreement on the
top class and the mean absolute difference, counted in the live figures of the shadow
version, with its own requests, errors and latency. At most ``limit`` copies are in flight
per gateway; past it a copy is dropped and counted, never queued.

Both adapters copy a call the same way: its OIP REST body POSTed to an instance of the
shadow version (:func:`rest_copy`; gRPC's ``ModelInfer`` transcoded as it is for the live
call), and hand the live answer over as an :class:`Answer` (JSON or binary tensors) once
they have it whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aimesh.errors import AimeshError, UpstreamTimeout
from aimesh.gateway.core import ModelCore
from aimesh.gateway.http1 import HttpClient, UpstreamResponse
from aimesh.gateway.instances import Upstream
from aimesh.gateway.routing import Target
from aimesh.gateway.upstream import Exchange, NotSent
from aimesh.resilience import DEADLINE_HEADER, deadline_header_value
from aimesh.rollouts import FigureBook, OutcomeClass, class_of, compare_bodies

__all__ = ["SHADOW_LIMIT", "Answer", "Shadows", "rest_copy"]

log = logging.getLogger("aimesh.gateway")

SHADOW_LIMIT = 64
"""Shadow copies in flight per gateway at most."""
_LIVE_WAIT_S = 60.0  # the live answer is handed over when the client's call ends
_HEADER_LENGTH = b"inference-header-content-length"
_DEADLINE = DEADLINE_HEADER.encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """An inference's answer as OIP REST gives it: the status and the whole body."""

    status: int
    body: bytes
    header_length: int | None = None
    """The JSON header's length when the body carries binary tensors (the extension)."""

    @classmethod
    def of(cls, response: UpstreamResponse, body: bytes) -> Answer:
        """The answer ``response`` gave, its whole ``body`` read."""
        length = response.header(_HEADER_LENGTH)
        return cls(response.status, body, int(length) if length and length.isdigit() else None)


def rest_copy(
    client: HttpClient, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> Exchange[Answer]:
    """The exchange of a shadow copy: ``body`` POSTed to ``path`` on an instance's REST
    port (with the time it has, as the live call's exchanges send it), the answer read
    whole."""

    async def exchange(upstream: Upstream, timeout_s: float) -> Answer:
        if upstream.rest is None:
            raise NotSent("the instance has no REST address")
        sent = [*headers, (_DEADLINE, deadline_header_value(timeout_s).encode())]
        pool = client.pool(*upstream.rest)
        response = await pool.request(b"POST", path, sent, body, timeout=timeout_s)
        if response.shutting_down():
            response.abandon()
            raise NotSent("the instance is shutting down")
        whole = response.take() if response.complete else await response.body(timeout_s)
        return Answer.of(response, whole)

    return exchange


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
            answer = await self._core.call("shadow", target, exchange)
        except AimeshError as exc:
            failure: OutcomeClass = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream"
            self._figures.count(model, version, failure, time.perf_counter() - started)
            log.debug("shadow copy to %s@%s failed: %s", model, version, exc.message)
            return
        self._figures.count(model, version, class_of(answer.status), time.perf_counter() - started)
        if answer.status != 200:
            return
        try:
            given = await asyncio.wait_for(asyncio.shield(live), _LIVE_WAIT_S)
        except TimeoutError:
            return
        if given is None or given.status != 200:
            return
        comparison = compare_bodies(  # bodies are bounded (1 MiB): quick
            given.body, answer.body,
            live_header_length=given.header_length, shadow_header_length=answer.header_length,
        )  # fmt: skip
        if comparison is not None:
            self._figures.compared(model, version, comparison.agreed, comparison.mean_abs_diff)

    async def close(self) -> None:
        """Stop the copies under way."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

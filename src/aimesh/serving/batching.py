"""Adaptive batching: coalesce concurrent requests into one model call, then split the answer.

Two parts. :func:`merge` and :func:`split` are pure functions over named arrays, tested by
tables. :class:`Batcher` is the small timing loop around them: requests queue; whenever the
model is free, the queue is taken up to ``max_batch_size`` rows and run as one call. Under
load it waits up to ``max_latency_s`` for a batch to fill, but no longer than until as many
requests are queued as the last batch held (the concurrency it saw: under steady load,
nobody else is coming); a lone request on an idle model runs at once, so batching costs
nothing at concurrency 1. A failing batch fails only the
requests in it. The clock is injected so that queue times can be tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from aimesh.errors import QueueFull

Arrays = dict[str, np.ndarray]
Predict = Callable[[Mapping[str, np.ndarray]], Arrays]


# -- the pure part ----------------------------------------------------------------------------


def rows_of(inputs: Mapping[str, np.ndarray]) -> int:
    """The batch size of a request: the first dimension its inputs share."""
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def batch_key(inputs: Mapping[str, np.ndarray]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Requests merge only when their inputs agree in name, dtype and all but the first dim."""
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


def merge(requests: list[Mapping[str, np.ndarray]]) -> tuple[Arrays, list[int]]:
    """Concatenate requests along the batch dimension; return the merged inputs and row counts."""
    sizes = [rows_of(r) for r in requests]
    if len(requests) == 1:
        return dict(requests[0]), sizes
    names = list(requests[0])
    return {name: np.concatenate([r[name] for r in requests]) for name in names}, sizes


def split(outputs: Mapping[str, np.ndarray], sizes: list[int]) -> list[Arrays]:
    """Cut merged outputs back into one dict per request, by the requests' row counts."""
    if len(sizes) == 1:
        return [dict(outputs)]
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(f"output {name!r} has {array.shape} rows, expected {total}")
    bounds = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(sizes))]


# -- the timing loop --------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[tuple[str, str, tuple[int, ...]], ...]
    enqueued: float
    future: asyncio.Future[Arrays] = field(repr=False)


@dataclass(slots=True)
class BatchStats:
    """What one model call looked like, for metrics."""

    requests: int
    rows: int
    queue_s: list[float]


class Batcher:
    """Runs ``predict`` on coalesced batches of concurrent requests, one batch at a time."""

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int = 64,
        max_latency_s: float = 0.002,
        max_queue: int = 1024,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.max_queue = max_queue
        self._executor = executor
        self._clock = clock
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_batch_requests = 1

    def __len__(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Queue one request and wait for its share of a batch's outputs."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the batch queue is full ({self.max_queue} requests)")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Pending(inputs, rows_of(inputs), batch_key(inputs), self._clock(), future)
        )
        self._arrived.set()
        return await future

    async def close(self) -> None:
        """Stop the loop; requests still queued are failed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(asyncio.CancelledError("batcher closed"))

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_more()
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _wait_for_more(self) -> None:
        # Adaptive: wait for the batch to fill only when the last batch showed concurrent load.
        if self._last_batch_requests <= 1 and len(self._queue) <= 1:
            return
        deadline = self._queue[0].enqueued + self.max_latency_s
        while (
            self._queued_rows() < self.max_batch_size
            and len(self._queue) < self._last_batch_requests
        ):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    def _take(self) -> list[_Pending]:
        """The oldest request and every queued request that merges with it, up to the limit."""
        first = self._queue.popleft()
        batch, rows, rest = [first], first.rows, deque[_Pending]()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.cancelled():
                continue
            if pending.key == first.key and rows + pending.rows <= self.max_batch_size:
                batch.append(pending)
                rows += pending.rows
            else:
                rest.append(pending)
        self._queue.extendleft(reversed(rest))
        return [p for p in batch if not p.future.cancelled()]

    async def _execute(self, batch: list[_Pending]) -> None:
        started = self._clock()
        self._last_batch_requests = len(batch)
        try:
            merged, sizes = merge([p.inputs for p in batch])
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self._predict, merged)
            results = split(outputs, sizes)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # One bad request must not fail its neighbours: run each alone to find the culprit.
            for p in batch:
                await self._execute([p])
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(len(batch), sum(sizes), [started - p.enqueued for p in batch])
            )

"""Batching: merge/split by tables, and the timing loop with real concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from aimesh.errors import QueueFull
from aimesh.serving.batching import Arrays, Batcher, BatchStats, batch_key, merge, split


def _x(rows: int, cols: int = 3, start: float = 0.0) -> np.ndarray:
    return np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) + start


@pytest.mark.parametrize(
    ("row_counts", "expected_rows"),
    [([1], 1), ([1, 1, 1], 3), ([2, 5, 1], 8), ([0, 3], 3)],
)
def test_merge_then_split_gives_each_request_its_rows(
    row_counts: list[int], expected_rows: int
) -> None:
    requests = [{"x": _x(n, start=100.0 * i)} for i, n in enumerate(row_counts)]
    merged, sizes = merge(requests)
    assert merged["x"].shape == (expected_rows, 3) and sizes == row_counts
    back = split({"y": merged["x"] * 2, "z": merged["x"][:, 0]}, sizes)
    for request, answer in zip(requests, back, strict=True):
        np.testing.assert_array_equal(answer["y"], request["x"] * 2)
        np.testing.assert_array_equal(answer["z"], request["x"][:, 0])


def test_split_refuses_outputs_that_lost_rows() -> None:
    with pytest.raises(ValueError, match="rows"):
        split({"y": np.zeros(3)}, [2, 2])


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"x": np.zeros((1, 3))}, {"x": np.zeros((4, 3))}, True),
        ({"x": np.zeros((1, 3))}, {"x": np.zeros((1, 4))}, False),
        ({"x": np.zeros((1, 3))}, {"x": np.zeros((1, 3), dtype=np.float32)}, False),
        ({"x": np.zeros((1, 3))}, {"w": np.zeros((1, 3))}, False),
    ],
)
def test_batch_key_groups_only_compatible_requests(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], same: bool
) -> None:
    assert (batch_key(a) == batch_key(b)) is same


class Model:
    """A model that records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        x = inputs["x"]
        if np.isnan(x).any():
            raise ValueError("NaN in input")
        self.calls.append(x.shape[0])
        return {"y": x.sum(axis=1)}


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    model = Model()
    stats: list[BatchStats] = []

    async def main() -> list[Arrays]:
        batcher = Batcher(model, max_batch_size=16, max_latency_s=0.05, on_batch=stats.append)
        requests = [{"x": _x(1 + i % 3, start=i)} for i in range(40)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        for request, answer in zip(requests, answers, strict=True):
            np.testing.assert_array_equal(answer["y"], request["x"].sum(axis=1))
        return answers

    _run(main())
    assert sum(model.calls) == sum(1 + i % 3 for i in range(40))
    assert max(model.calls) <= 16
    assert len(model.calls) < 40  # coalesced
    assert sum(s.requests for s in stats) == 40


def test_lone_request_on_an_idle_model_does_not_wait() -> None:
    model = Model()
    clock_value = [0.0]

    async def main() -> None:
        # A latency of an hour: if the lone request waited for it, the test would time out.
        batcher = Batcher(model, max_latency_s=3600, clock=lambda: clock_value[0])
        for _ in range(3):
            await batcher.submit({"x": _x(1)})
        await batcher.close()

    _run(main())
    assert model.calls == [1, 1, 1]


def test_under_steady_load_a_batch_runs_once_the_last_batchs_count_is_queued() -> None:
    """Closed-loop clients: as many requests as the last batch held means nobody else comes."""
    model = Model()
    now = [0.0]

    async def main() -> None:
        # An hour of max latency and a frozen clock: only the early stop lets batches run.
        batcher = Batcher(model, max_batch_size=64, max_latency_s=3600, clock=lambda: now[0])
        for _ in range(3):  # three rounds of four concurrent clients
            await asyncio.gather(*(batcher.submit({"x": _x(1)}) for _ in range(4)))
        await batcher.close()

    _run(main())
    assert model.calls[-2:] == [4, 4]


def test_a_bad_request_fails_alone() -> None:
    model = Model()

    async def main() -> list[object]:
        batcher = Batcher(model, max_batch_size=64, max_latency_s=0.05)
        bad = _x(1)
        bad[0, 0] = np.nan
        requests = [{"x": _x(1)}, {"x": bad}, {"x": _x(2)}]
        results = await asyncio.gather(
            *(batcher.submit(r) for r in requests), return_exceptions=True
        )
        await batcher.close()
        return results

    first, second, third = _run(main())  # type: ignore[misc]
    assert isinstance(second, ValueError)
    assert isinstance(first, dict) and isinstance(third, dict)
    np.testing.assert_array_equal(third["y"], _x(2).sum(axis=1))


def test_incompatible_requests_are_not_merged() -> None:
    model = Model()

    async def main() -> None:
        batcher = Batcher(model, max_latency_s=0.01)
        wide = {"x": np.ones((1, 5))}
        narrow = {"x": np.ones((1, 3))}
        a, b = await asyncio.gather(batcher.submit(wide), batcher.submit(narrow))
        assert a["y"].tolist() == [5.0] and b["y"].tolist() == [3.0]
        await batcher.close()

    _run(main())


def test_queue_is_bounded() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow(inputs: Mapping[str, np.ndarray]) -> Arrays:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
            return {"y": inputs["x"]}

        batcher = Batcher(slow, max_batch_size=1, max_queue=2)
        first = asyncio.ensure_future(batcher.submit({"x": _x(1)}))
        await asyncio.sleep(0)  # the first starts running and holds the model
        while len(batcher):
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit({"x": _x(1)})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit({"x": _x(1)})
        gate.set()
        await asyncio.gather(first, *queued)
        await batcher.close()

    _run(main())

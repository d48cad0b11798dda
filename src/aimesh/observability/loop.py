"""Running a service's event loop: on uvloop when it is installed, plain asyncio otherwise.

uvloop (brought by ``uvicorn[standard]``) makes the loop itself cheaper: the hot-path
services (the model service, the gateway) run on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "run_service"]

T = TypeVar("T")

_RECANCEL_S = 0.1


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh event loop (uvloop's when installed)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        return runner.run(main)


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], timeout_s: float) -> bool:
    """Cancel ``tasks`` and wait up to ``timeout_s`` for them to end; False if some did not.

    A task is cancelled again every 0.1 s until it ends: one cancellation can be lost
    (Python 3.11's ``wait_for``, which nats-py uses for every request, returns the result
    instead when the cancellation lands as its future completes; some libraries catch
    ``CancelledError``), and a loop that lost it would otherwise run for ever.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            return False
        _, pending = await asyncio.wait(pending, timeout=min(_RECANCEL_S, left))
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the owner cancelled it and wants no result
    return True

"""Running a service's event loop: on uvloop when it is installed, plain asyncio otherwise.

uvloop (brought by ``uvicorn[standard]``) makes the loop itself cheaper: the hot-path
services (the model service, the gateway) run on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_service"]

T = TypeVar("T")


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

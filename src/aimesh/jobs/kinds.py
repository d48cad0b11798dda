"""Built-in job kinds: ``noop`` (for tests and benchmarks) and ``sleep`` (for tests, demos)."""

from __future__ import annotations

import asyncio

from aimesh.errors import JobRejected
from aimesh.jobs.handlers import JobContext

__all__ = ["noop", "sleep"]

_STEP_S = 0.25


async def noop(ctx: JobContext) -> object:
    """Do nothing; the result is the payload's ``echo``, if any."""
    return ctx.payload.get("echo")


async def sleep(ctx: JobContext) -> dict[str, float]:
    """Sleep ``payload["seconds"]`` (default 1), reporting progress every quarter second."""
    seconds = ctx.payload.get("seconds", 1.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise JobRejected(f"sleep needs a number of seconds >= 0, not {seconds!r}")
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(_STEP_S, left))
        slept = seconds - max(end - loop.time(), 0)
        ctx.progress(slept / seconds, f"slept {slept:.2f}s of {seconds:g}s")
    return {"slept_s": float(seconds)}

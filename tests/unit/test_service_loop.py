"""Running a service's loop and stopping its background tasks, however they take a cancel."""

from __future__ import annotations

import asyncio
import contextlib

from aimesh.observability import cancel_and_wait, run_service


async def _swallows(cancellations: int, ended: list[str]) -> None:
    """A loop that loses ``cancellations`` cancellations, as Python 3.11's wait_for can."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if cancellations == 0:
                ended.append("cancelled")
                raise
            cancellations -= 1


def test_a_task_that_loses_a_cancellation_is_still_stopped() -> None:
    ended: list[str] = []

    async def main() -> bool:
        task = asyncio.create_task(_swallows(2, ended))
        await asyncio.sleep(0)
        return await cancel_and_wait([task], timeout_s=5)

    assert run_service(main()) is True
    assert ended == ["cancelled"]


def test_a_task_that_never_stops_is_given_up_on_after_the_timeout() -> None:
    async def main() -> tuple[bool, float]:
        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await release.wait()

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopped = await cancel_and_wait([task], timeout_s=0.3)
        took = loop.time() - started
        release.set()
        await task
        return stopped, took

    stopped, took = run_service(main())
    assert stopped is False
    assert 0.25 <= took < 5

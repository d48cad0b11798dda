"""Running a service's loop and stopping its background tasks, however they take a cancel."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys

from aimesh.observability import EXIT_STOP_TIMEOUT, cancel_and_wait, run_service


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


# -- stopping on signals: a real process, signalled as a user or a service manager would ---

_CHILD = """
import asyncio, logging, sys, time
from aimesh.observability import stop_on_signals

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
mode = sys.argv[1]

async def main():
    stopping = asyncio.Event()
    hurry = (lambda: print("hurried", flush=True)) if mode == "hurry" else None
    stop_on_signals(stopping.set, what="the child", grace_s=float(sys.argv[2]), hurry=hurry)
    print("ready", flush=True)
    await stopping.wait()
    if mode == "blocked":
        time.sleep(600)  # a drain that blocks the loop itself
    await asyncio.Event().wait()  # a stop that never ends

asyncio.run(main())
"""


def _child(mode: str, grace_s: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, str(grace_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def _said(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    for said in proc.stdout:
        if line in said:
            return
    raise AssertionError(f"never said {line!r}")


def test_a_stop_that_never_ends_is_ended_by_the_watchdog() -> None:
    proc = _child("hangs", grace_s=0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_STOP_TIMEOUT


def test_a_second_signal_exits_at_once_even_with_the_loop_blocked() -> None:
    proc = _child("blocked", grace_s=600)
    proc.send_signal(signal.SIGINT)
    _said(proc, "SIGINT: stopping the child (SIGINT again to exit at once)")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == -signal.SIGINT


def test_with_hurry_the_second_signal_hurries_and_the_third_exits() -> None:
    proc = _child("hurry", grace_s=600)
    proc.send_signal(signal.SIGTERM)
    _said(proc, "SIGTERM: stopping the child (SIGTERM again to stop without draining)")
    proc.send_signal(signal.SIGTERM)
    _said(proc, "hurried")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM

"""Running and stopping a long-running command: its event loop, its signals, its tasks.

The loop is uvloop's when installed (``uvicorn[standard]`` brings it): the hot-path
services (the model service, the gateway) run on it. Every long-running command stops the
same way (:func:`stop_on_signals`): the first SIGINT or SIGTERM stops it in order, bounded
by a watchdog; the second exits at once, whatever state the bus or the stack is in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, Final, TypeVar

__all__ = ["EXIT_STOP_TIMEOUT", "STOP_SIGNALS", "cancel_and_wait", "run_service", "stop_on_signals"]

log = logging.getLogger("aimesh")

T = TypeVar("T")

_RECANCEL_S = 0.1

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
"""What asks a long-running command to stop: Ctrl-C and ``kill`` (and service managers)."""


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


def stop_on_signals(
    stop: Callable[[], object],
    *,
    what: str,
    grace_s: float | None = None,
    hurry: Callable[[], object] | None = None,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
) -> None:
    """Make SIGINT and SIGTERM stop this command, the one way every aimesh command stops.

    The first signal calls ``stop`` (set an event, or raise to unwind sync code) and logs
    that ``what`` is stopping. With ``grace_s``, a watchdog thread then ends the process
    if it is still running that long after: a stop that hangs (a lost bus, a stuck
    library call, a blocked loop) cannot keep it alive. The next signal exits at once:
    the handlers go back to the system's default, so the kernel ends the process however
    busy or blocked it is. With ``hurry``, the second signal calls it instead (a
    supervisor stopping its children without drain) and only the third exits at once.

    Signals reach the main thread only: called from another one (a service embedded in a
    test, say), it does nothing. Inside a running event loop the handlers go through the
    loop (``add_signal_handler``), so ``stop`` runs as a callback of that loop.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    received = 0

    def exit_at_once() -> None:
        for sig in signals:
            if loop is not None:
                loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            if hurry is None:
                exit_at_once()
            if grace_s is not None:
                _watchdog(what, grace_s)
            again = "again to stop without draining" if hurry else "again to exit at once"
            log.info("%s: stopping %s (%s %s)", name, what, name, again)
            stop()
        elif hurry is not None and received == 2:
            exit_at_once()
            log.warning("%s again: stopping %s without draining", name, what)
            hurry()
        else:  # arrived before the default was back: end as the default would
            exit_at_once()
            os.kill(os.getpid(), signum)

    for sig in signals:
        if loop is not None:
            loop.add_signal_handler(sig, on_signal, sig)
        else:
            signal.signal(sig, lambda signum, _frame: on_signal(signum))


def _watchdog(what: str, grace_s: float) -> None:
    def expire() -> None:
        log.error("%s did not stop within %.0fs of the signal; exiting now", what, grace_s)
        logging.shutdown()
        os._exit(EXIT_STOP_TIMEOUT)

    timer = threading.Timer(grace_s, expire)
    timer.name = "stop-watchdog"
    timer.daemon = True
    timer.start()


EXIT_STOP_TIMEOUT: Final = 124
"""The exit status of a command the watchdog ended (as ``timeout(1)`` uses)."""

"""Driving a stack from outside its supervisor: start it detached, stop it, clean up after it.

Everything goes through the home: the stack lock says whether a supervisor runs, and
``stack.json`` says which pid to signal and which processes it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nats.errors

from aimesh.errors import Unavailable
from aimesh.local.discovery import purge_quietly, stack_bus
from aimesh.local.logs import SUPERVISOR_LOG, read_from
from aimesh.local.state import (
    StackState,
    logs_dir,
    read_state,
    remove_state,
    supervisor_running,
)

if TYPE_CHECKING:
    from aimesh.config import Settings

log = logging.getLogger("aimesh.local")

POLL_S = 0.1
# How long `down` waits for a supervisor that released its lock to leave the process table.
EXIT_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class StopReport:
    """What :func:`stop_stack` found and did."""

    was_running: bool
    supervisor_pid: int | None = None
    leftovers: int = 0


def start_detached(
    home: Path, up_args: list[str], *, env: dict[str, str] | None = None, timeout_s: float
) -> StackState:
    """Run ``aimesh UP_ARGS`` in a new session, logging to ``HOME/logs/supervisor.log``.

    Returns the stack once every process is ready, or raises :class:`Unavailable` with the
    log's last lines if the supervisor exits first or ``timeout_s`` passes.
    """
    log_file = logs_dir(home) / f"{SUPERVISOR_LOG}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        offset = out.tell()  # what this run writes starts here
        # A new session: the supervisor outlives this command and its terminal.
        proc = subprocess.Popen(
            [sys.executable, "-m", "aimesh", *up_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise _failed(log_file, offset, f"the supervisor exited with code {code}")
        state = read_state(home)
        if state is not None and state.supervisor_pid == proc.pid and state.ready:
            return state
        if time.monotonic() > deadline:
            raise _failed(log_file, offset, f"the stack was not ready within {timeout_s:g}s")
        time.sleep(POLL_S)


def _failed(log_file: Path, offset: int, what: str) -> Unavailable:
    """The error, with what the supervisor wrote in this run (the cause is at its end)."""
    output = read_from(log_file, offset)[-40:]
    shown = "\n".join(f"  {line}" for line in output)
    return Unavailable(f"the stack did not start: {what} (log: {log_file}):\n{shown}")


def stop_stack(home: Path, *, timeout_s: float, settings: Settings | None = None) -> StopReport:
    """Stop the home's stack: SIGTERM its supervisor and wait until it is gone.

    A supervisor that does not finish within ``timeout_s`` is killed, and so is anything it
    left; so are the processes of a supervisor that died without stopping them.
    """
    state = read_state(home)
    if not supervisor_running(home):
        if state is None:
            return StopReport(was_running=False)
        return StopReport(
            was_running=False, leftovers=asyncio.run(clear_leftovers(home, state, settings))
        )
    pid = state.supervisor_pid if state is not None else None
    if pid is None:
        raise Unavailable(f"a supervisor holds {home}'s stack lock but left no stack.json")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while supervisor_running(home):
        if time.monotonic() > deadline:
            log.warning("the supervisor (pid %d) did not stop in time; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not supervisor_running(home), 5.0)
            break
        time.sleep(POLL_S)
    # The lock goes with the supervisor's last step, the interpreter's exit after it: `down`
    # returns when the process itself is gone, not only its lock.
    if not _wait_until(functools.partial(_gone, pid), EXIT_WAIT_S):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    leftovers = asyncio.run(clear_leftovers(home, read_state(home), settings))
    return StopReport(was_running=True, supervisor_pid=pid, leftovers=leftovers)


async def clear_leftovers(
    home: Path, state: StackState | None, settings: Settings | None = None
) -> int:
    """Stop what a dead supervisor left running, clear its discovery entries; how many.

    ``settings``: the home's, when known (an external bus's credentials are only there).
    """
    if state is None:
        return 0
    alive = [p for p in state.processes if p.pid is not None and _is_aimesh(p.pid)]
    for process in alive:
        assert process.pid is not None
        log.warning(
            "stopping %s (pid %d), left by a supervisor that died", process.name, process.pid
        )
        _signal_group(process.pid, signal.SIGTERM)
    for process in alive:
        assert process.pid is not None
        pid = process.pid
        await asyncio.to_thread(_wait_until, functools.partial(_gone, pid), 20.0)
        _signal_group(pid, signal.SIGKILL)  # also any worker it left behind
    bus_url, credentials = stack_bus(home, state.bus_url, settings)
    if bus_url is not None and state.processes:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await purge_quietly(
                bus_url,
                credentials=credentials,
                ports={p.http_port for p in state.processes},
                pids={p.pid for p in state.processes if p.pid is not None},
            )
    remove_state(home)
    return len(alive)


def _is_aimesh(pid: int) -> bool:
    """Whether ``pid`` is alive and, where ``/proc`` tells, still an aimesh process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process now: the pid was reused
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no /proc (macOS): the pid is all there is to go on
    with contextlib.suppress(OSError):
        if (proc / "stat").read_text().rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        return b"aimesh" in (proc / "cmdline").read_bytes()
    return False


def _gone(pid: int) -> bool:
    return not _is_aimesh(pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each child leads its own process group, which also holds any workers it started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True

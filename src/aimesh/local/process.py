"""One supervised child: start it, wait until it is ready, restart it when it dies, stop it.

Each child is ``python -m aimesh ARGS`` in its own process group: Ctrl-C in the terminal
reaches only the supervisor, which then stops the children in order, and a SIGKILL to the
group also takes any workers a child started. Its output is appended to its log file,
after a line that marks each (re)start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from aimesh.errors import Unavailable
from aimesh.local.logs import read_from
from aimesh.local.plan import ProcessSpec

log = logging.getLogger("aimesh.local")

POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff between restarts, forgiven once a process stays up a while."""

    initial_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows ``failures`` quick deaths in a row."""
        return min(self.initial_s * 2.0 ** max(failures - 1, 0), self.max_s)


class ManagedProcess:
    """A child process of the supervisor, with its state as ``stack.json`` shows it."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        env: dict[str, str],
        ready_timeout_s: float,
        policy: RestartPolicy,
        on_change: Callable[[], None],
        on_exit: Callable[[ProcessSpec, int], Awaitable[None]],
    ) -> None:
        self.spec = spec
        self.state = spec.initial_state()
        self._env = env
        self._ready_timeout_s = ready_timeout_s
        self._policy = policy
        self._on_change = on_change
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self._log_offset = 0  # where the current run's lines start in the log
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _set(self, **changes: object) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self._on_change()

    def _spawn(self, reason: str) -> None:
        # Popen is synchronous on purpose: a spawn cut short by cancellation would leave a
        # child nobody knows about, and fork+exec returns in milliseconds.
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "aimesh", *self.spec.args]
        now = datetime.now(UTC)
        with self.spec.log_file.open("ab") as out:
            self._log_offset = out.tell()
            out.write(
                f"--- aimesh up: {reason} {self.spec.name} at {now:%Y-%m-%d %H:%M:%S} UTC: "
                f"{' '.join(argv[1:])}\n".encode()
            )
            out.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                process_group=0,
            )
        self._spawned_at = time.monotonic()
        log.info("%s %s (pid %d)", reason, self.spec.name, self._proc.pid)
        self._set(pid=self._proc.pid, started=now, state="starting")

    async def start(self) -> None:
        """Start it and wait until it is ready; :class:`Unavailable` (with its log) if not."""
        self._spawn("started")
        await self._wait_ready()
        if not self._stopping:
            self._watch = asyncio.create_task(self._supervise(), name=f"watch-{self.spec.name}")

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self._ready_timeout_s
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while True:
                code = proc.poll()
                if code is not None:
                    raise self._failure(f"{describe_exit(code)} before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.spec.ready_url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"was not ready at {self.spec.ready_url} within {self._ready_timeout_s:g}s"
                    )
                await asyncio.sleep(POLL_S)
        log.info("%s ready at %s", self.spec.name, self.spec.rest_url)
        self._set(state="ready")

    def _failure(self, what: str) -> Unavailable:
        lines = read_from(self.spec.log_file, self._log_offset)[-20:]
        shown = "\n".join(f"  {line}" for line in lines)
        return Unavailable(
            f"{self.spec.name} {what}; its output ({self.spec.log_file}):\n{shown}",
            process=self.spec.name,
        )

    async def _supervise(self) -> None:
        """Restart the child whenever it dies, until :meth:`stop` cancels this."""
        failures = 0
        while True:
            proc = self._proc
            assert proc is not None
            while (code := proc.poll()) is None:
                await asyncio.sleep(POLL_S)
            up_for = time.monotonic() - self._spawned_at
            failures = 1 if up_for >= self._policy.reset_after_s else failures + 1
            delay = self._policy.delay(failures)
            log.warning(
                "%s (pid %d) %s; restarting in %.1fs",
                self.spec.name, proc.pid, describe_exit(code), delay,
            )  # fmt: skip
            _kill_group(proc.pid)  # workers it may have left behind still hold its ports
            self._set(state="restarting", last_exit=code, pid=None)
            await self._on_exit(self.spec, proc.pid)
            await asyncio.sleep(delay)
            self._set(restarts=self.state.restarts + 1)
            self._spawn("restarted")
            try:
                await self._wait_ready()
            except Unavailable as exc:
                log.warning("%s", exc.message.splitlines()[0])
                # Exited, or alive but not ready in time: make sure it is gone, and let the
                # loop count one more failure.
                assert self._proc is not None
                await _terminate(self._proc, timeout_s=5.0)

    async def stop(self, timeout_s: float, hurry: asyncio.Event) -> int | None:
        """Stop restarting it, SIGTERM it, wait up to ``timeout_s`` (or ``hurry``), SIGKILL."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._set(state="stopping")
            log.info("stopping %s (pid %d)", self.spec.name, proc.pid)
        code = await _terminate(proc, timeout_s, hurry)
        self._set(state="stopped", pid=None, last_exit=code)
        log.info("stopped %s (%s)", self.spec.name, describe_exit(code))
        await self._on_exit(self.spec, proc.pid)
        return code


async def _terminate(
    proc: subprocess.Popen[bytes], timeout_s: float, hurry: asyncio.Event | None = None
) -> int:
    """SIGTERM, a wait for it to drain and exit, then SIGKILL to its whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                break
            await asyncio.sleep(POLL_S)
    if proc.poll() is None:
        log.warning("pid %d did not exit in time; killing it", proc.pid)
    _kill_group(proc.pid)
    while (code := proc.poll()) is None:
        await asyncio.sleep(POLL_S)
    return code


def describe_exit(code: int) -> str:
    """``exited with code 1``, or ``ended by SIGKILL`` for a negative code."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"ended by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a child's process group (the child leads its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)

"""What a running stack leaves in its home, so that other commands find it.

``HOME/run/stack.json`` describes the supervisor and every process it runs; it is written
atomically on every change and removed when the supervisor stops. ``HOME/run/stack.lock``
is held (``fcntl``) by the supervisor for as long as it runs: a held lock, not the pid in
the file, is what says a supervisor is alive, since a pid can be given to another program.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from aimesh.errors import Conflict

log = logging.getLogger("aimesh.local")

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"

ProcessKind = Literal["registry", "lake", "jobs", "model", "worker", "controller", "gateway"]
ProcessPhase = Literal["starting", "ready", "restarting", "stopping", "stopped"]
StackPhase = Literal["starting", "running", "stopping"]


class ProcessState(msgspec.Struct, kw_only=True):
    """One supervised process (a service, or one replica of a model service)."""

    name: str
    service: str
    replica: int
    kind: ProcessKind
    host: str
    http_port: int
    grpc_port: int | None = None
    rest_url: str
    grpc_address: str | None = None
    ready_url: str
    log_file: str
    ref: str | None = None
    pid: int | None = None
    state: ProcessPhase = "starting"
    started: datetime | None = None
    restarts: int = 0
    last_exit: int | None = None


class StackState(msgspec.Struct, kw_only=True):
    """The supervisor and its processes, as ``HOME/run/stack.json`` records them."""

    supervisor_pid: int
    started: datetime
    home: str
    config_file: str | None
    bus_url: str | None = None
    phase: StackPhase = "starting"
    processes: list[ProcessState] = msgspec.field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Whether the stack finished starting and every process answers its ready check."""
        return self.phase == "running" and all(p.state == "ready" for p in self.processes)


def run_dir(home: Path) -> Path:
    """Where the supervisor keeps its state and lock."""
    return home / "run"


def logs_dir(home: Path) -> Path:
    """Where every supervised process (and a detached supervisor) writes its log."""
    return home / "logs"


def read_state(home: Path) -> StackState | None:
    """The recorded stack of ``home``, or ``None`` when there is none."""
    path = run_dir(home) / STATE_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=StackState)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        # Written atomically, so an unreadable file was edited by hand: treat it as absent.
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def write_state(home: Path, state: StackState) -> None:
    """Replace the recorded stack atomically (readers never see half a file)."""
    folder = run_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)


def remove_state(home: Path) -> None:
    """Forget the recorded stack."""
    (run_dir(home) / STATE_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def hold_stack_lock(home: Path, *, wait_s: float = 2.0) -> Iterator[None]:
    """Hold the home's stack lock, or raise :class:`Conflict` if another supervisor has it."""
    folder = run_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    # Never deleted: unlinking a lock file lets two processes each lock a different file.
    with (folder / LOCK_FILE).open("a") as handle:
        # A short wait, since `status` and `down` take the lock for an instant to test it.
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    state = read_state(home)
                    pid = f" (supervisor pid {state.supervisor_pid})" if state else ""
                    raise Conflict(
                        f"a stack is already running for {home}{pid}; "
                        "`aimesh status` shows it, `aimesh down` stops it",
                        home=str(home),
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def supervisor_running(home: Path) -> bool:
    """Whether a supervisor holds the home's stack lock now."""
    path = run_dir(home) / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False

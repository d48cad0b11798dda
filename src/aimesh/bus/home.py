"""One embedded bus per aimesh home, shared by every process of that home.

The first process that needs the bus (:func:`ensure_bus`) starts a detached ``nats-server``
(its own session, so it outlives that process) with JetStream under ``HOME/bus/jetstream``,
and records where it listens in ``HOME/bus/server.json``. Later processes read the record,
check that the server still answers with the recorded id, and use it. An ``fcntl`` lock on
``HOME/bus/server.lock`` makes two processes that start at once agree on one server.

How it stops: ``aimesh bus stop`` (:func:`stop_embedded_bus`), or SIGTERM to the pid in
``server.json``. Nothing stops it when the process that started it exits, on purpose: the
other processes of the home may still be using it. A machine reboot leaves a stale record,
which the next :func:`ensure_bus` replaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from aimesh.bus.server import FORBIDDEN_PORT, LOG_FILE, EmbeddedNats, probe_server
from aimesh.config import Settings
from aimesh.errors import BusUnavailable

__all__ = ["BusStatus", "ServerRecord", "embedded_bus_status", "ensure_bus", "stop_embedded_bus"]

_log = logging.getLogger(__name__)

RECORD_FILE = "server.json"
LOCK_FILE = "server.lock"


class ServerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What ``HOME/bus/server.json`` holds about the home's running server."""

    url: str
    monitor_url: str
    pid: int
    server_id: str
    started: datetime


class BusStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Which bus a home uses and whether it answers."""

    mode: Literal["embedded", "external"]
    running: bool
    url: str | None = None
    pid: int | None = None
    started: datetime | None = None
    monitor_url: str | None = None
    folder: str | None = None
    log_file: str | None = None


# Detached servers this process started, kept so that one stopped from here is reaped, and
# so that no Popen is dropped while its child runs (which would warn).
_started_here: dict[int, EmbeddedNats] = {}


def ensure_bus(settings: Settings) -> str:
    """The URL of the bus to use, starting the home's embedded server if none answers.

    ``settings.bus.url`` wins when set. Blocking (it may start a process and wait for it):
    from async code, call it through ``asyncio.to_thread``.
    """
    if settings.bus.url:
        return settings.bus.url
    folder = settings.bus_dir
    with _home_lock(folder):
        record = _read_record(folder)
        if record is not None and _serving(record):
            return record.url
        if record is not None:
            _log.info("the embedded bus (pid %s) is gone; starting a new one", record.pid)
            gone = _started_here.pop(record.pid, None)
            if gone is not None:
                gone.stop()
        server = _start_detached(folder, settings, record)
        url = server.url
        assert server.pid is not None
        _started_here[server.pid] = server
        _write_record(
            folder,
            ServerRecord(
                url=url,
                monitor_url=server.monitor_url,
                pid=server.pid,
                server_id=server.server_id,
                started=datetime.now(UTC),
            ),
        )
        return url


def _start_detached(folder: Path, settings: Settings, last: ServerRecord | None) -> EmbeddedNats:
    # The previous server's port first: clients still connected to it reconnect by themselves.
    port = urlsplit(last.url).port if last is not None else None
    if port is not None and port != FORBIDDEN_PORT:
        server = EmbeddedNats(
            folder, port=port, start_timeout=settings.bus.start_timeout_s, detached=True
        )
        try:
            server.start()
            return server
        except BusUnavailable as exc:
            _log.info("cannot reuse port %s (%s); taking a free one", port, exc.message)
    server = EmbeddedNats(folder, start_timeout=settings.bus.start_timeout_s, detached=True)
    server.start()
    return server


def stop_embedded_bus(settings: Settings, *, timeout: float = 10.0) -> bool:
    """Stop the home's embedded server; ``True`` if one was running.

    Ignores ``settings.bus.url``: an external bus is never aimesh's to stop. Only a process
    that still answers as the recorded server is signalled, so a pid the system has since
    given to another program is never touched. The record stays, stale, so that the next
    :func:`ensure_bus` starts the server on the same port and old clients find it again.
    """
    folder = settings.bus_dir
    if not (folder / RECORD_FILE).exists():
        return False
    with _home_lock(folder):
        record = _read_record(folder)
        if record is None or not _serving(record):
            return False
        _terminate(record.pid, timeout)
        return True


def embedded_bus_status(settings: Settings) -> BusStatus:
    """The bus this home uses: the configured one, or the embedded one and its process."""
    if settings.bus.url:
        answers = probe_server(settings.bus.url) is not None
        return BusStatus(mode="external", running=answers, url=settings.bus.url)
    folder = settings.bus_dir
    status = BusStatus(
        mode="embedded", running=False, folder=str(folder), log_file=str(folder / LOG_FILE)
    )
    record = _read_record(folder)
    if record is None or not _serving(record):
        return status
    return msgspec.structs.replace(
        status,
        running=True,
        url=record.url,
        pid=record.pid,
        started=record.started,
        monitor_url=record.monitor_url,
    )


@contextlib.contextmanager
def _home_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    # Never deleted: unlinking a lock file lets two processes each lock a different file.
    with (folder / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_record(folder: Path) -> ServerRecord | None:
    try:
        return msgspec.json.decode((folder / RECORD_FILE).read_bytes(), type=ServerRecord)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        # It is written atomically, so a bad record was edited by hand: treat it as stale.
        _log.warning("ignoring unreadable %s: %s", folder / RECORD_FILE, exc)
        return None


def _write_record(folder: Path, record: ServerRecord) -> None:
    path = folder / RECORD_FILE
    tmp = path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(msgspec.json.format(msgspec.json.encode(record)))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _serving(record: ServerRecord) -> bool:
    if not _pid_alive(record.pid):
        return False
    info = probe_server(record.url)
    return info is not None and info.server_id == record.server_id


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        # Reaps the server if it was our child and has exited, so it is not seen as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A dead child of another live process answers kill(pid, 0) until that process reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _terminate(pid: int, timeout: float) -> None:
    server = _started_here.pop(pid, None)
    if server is not None:
        server.stop_timeout = timeout
        server.stop()
        return
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return
    _log.warning("nats-server pid %s ignored SIGTERM; killing it", pid)
    _signal(pid, signal.SIGKILL)
    if not _wait_gone(pid, 5.0):
        raise BusUnavailable(f"nats-server pid {pid} survived SIGKILL", pid=pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True

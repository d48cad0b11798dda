"""The servers under test as subprocesses on free ports, and what the benchmark asks of them.

A :class:`Server` starts its command in its own session (so that Ctrl-C reaches only the
benchmark, which then stops every server in order), waits until an inference (or, for a
service without one, ``GET ready_path``) answers 200, and stops with SIGTERM, then SIGKILL
after a timeout. Its output goes to a log file whose tail is shown if it fails to start.
Also here: what every benchmark's ``main`` does first (:func:`interrupt_on_sigterm`,
:func:`workdir`, :func:`busy`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from _cpu import machine_cpu_s
from _models import ALIAS, INFER_PATH, MODEL_NAME, BenchModel
from rich.console import Console

FORBIDDEN_PORT = 4222
BENCH_DIR = Path(__file__).resolve().parent


class ServerFailed(RuntimeError):
    """Raised when a server exits, does not become ready, or answers wrongly."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (never 4222)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port
    raise ServerFailed("no free port on 127.0.0.1")


class Server:
    """One server process, ready once an inference over REST answers 200."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        http_port: int,
        grpc_port: int | None = None,
        body: bytes = b"",
        log: Path,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        ready_path: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.body = body
        self.log = log
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.ready_path = ready_path
        """Ready once ``GET`` of this answers 200; ``None``: once a POST of ``body`` does."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._proc.pid

    def start(self) -> None:
        """Start the process and wait until it answers an inference."""
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with {self._proc.returncode} while starting: {self.tail()}"
                )
            try:
                if self.ready_path is None:
                    status, _ = post(self.http_port, self.body, timeout=5)
                else:
                    status = get(self.http_port, self.ready_path, timeout=5)
            except OSError as exc:
                last = repr(exc)
            else:
                if status == 200:
                    return
                last = f"HTTP {status}"
            time.sleep(0.1)
        raise ServerFailed(
            f"{self.name} not ready within {self.start_timeout_s:g}s ({last}): {self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

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


# -- the three kinds of server ----------------------------------------------------------------


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Set by hand, these would change how fast a server is: the benchmarks never pass them on."""


def server_env() -> dict[str, str]:
    """The environment every server runs in: ours, without AIMESH_* or thread-pool variables.

    The benchmarks set none of them, they only take them away: aimesh is measured as a user
    gets it (it caps its native thread pools itself, one thread per model process), the
    baselines with their libraries' defaults; what was taken is printed beside the figures.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}


def dropped_variables() -> str:
    """What :func:`server_env` leaves out of this environment, to print beside the figures."""
    found = sorted(k for k in os.environ if k.startswith(_DROPPED))
    return ", ".join(found) if found else "none"


_DROPPED = ("AIMESH_", *THREAD_VARIABLES)


AIMESH_COMMAND = (sys.executable, "-m", "aimesh")
"""How the benchmark runs aimesh, unless told another command (another build, a branch)."""


def aimesh_server(
    model: BenchModel,
    bus_url: str,
    log_dir: Path,
    *,
    batching: bool,
    command: Sequence[str] = AIMESH_COMMAND,
    ref: str = ALIAS,
    name: str | None = None,
) -> Server:
    """``aimesh serve fraud@champion`` (or ``fraud@<ref>``) with one worker, batching on or
    off; its log is ``log_dir/<name>.log`` when named."""
    http_port, grpc_port = free_port(), free_port()
    env = server_env() | {"AIMESH_HOME": str(model.home), "AIMESH_BUS__URL": bus_url}
    argv = [*command, "serve", f"{MODEL_NAME}@{ref}"]
    argv += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--workers", "1"]
    if batching:
        argv += ["--batching", "--max-batch-size", "64", "--max-latency-ms", "2"]
    else:
        argv += ["--no-batching"]
    label = "batching" if batching else "no-batching"
    return Server(
        name or f"aimesh ({label})",
        argv,
        http_port=http_port,
        grpc_port=grpc_port,
        body=model.json_body,
        log=log_dir / (f"{name}.log" if name else f"aimesh-{model.kind}-{label}.log"),
        env=env,
    )


def baseline_server(kind: str, model: BenchModel, log_dir: Path, *, route: str) -> Server:
    """The FastAPI baseline or the bare ASGI ceiling (``kind``: ``fastapi`` or ``bare``)."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "_baselines.py"), kind]
    argv += ["--model", str(model.artifact), "--port", str(port), "--route", route]
    return Server(
        kind,
        argv,
        http_port=port,
        body=model.json_body,
        log=log_dir / f"{kind}-{model.kind}.log",
        env=server_env(),
    )


# -- talking to a server ----------------------------------------------------------------------


def get(port: int, path: str, *, timeout: float) -> int:
    """``GET path`` on 127.0.0.1:port; the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def post(port: int, body: bytes, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """One REST inference; the status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", INFER_PATH, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_rest(server: Server, model: BenchModel) -> None:
    """The server's REST answer holds the probabilities the estimator gives."""
    status, body = post(server.http_port, model.json_body)
    if status != 200:
        raise ServerFailed(f"{server.name}: HTTP {status}: {body[:300]!r}")
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    got = np.asarray(outputs["probabilities"]["data"], dtype=np.float64)
    _compare(server.name, "REST", got, model.expected)


def check_grpc(server: Server, model: BenchModel) -> None:
    """The server's gRPC answer holds the probabilities the estimator gives."""
    import grpc

    from aimesh.protocol.grpc import ModelInferResponse, response_from_pb

    assert server.grpc_port is not None
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        raw = call(model.grpc_body, timeout=10)
    response = response_from_pb(ModelInferResponse.FromString(raw))
    outputs = {t.name: t for t in response.outputs}
    _compare(server.name, "gRPC", outputs["probabilities"].data, model.expected)


def _compare(name: str, protocol: str, got: np.ndarray, expected: np.ndarray) -> None:
    if not np.allclose(np.ravel(got), np.ravel(expected)):
        raise ServerFailed(f"{name} over {protocol} answered {got}, expected {expected}")


def batch_counts(port: int) -> tuple[float, float]:
    """aimesh's batch histogram so far: (requests in all model calls, model calls)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    total = calls = 0.0
    for line in text.splitlines():
        if line.startswith("aimesh_batch_size_requests_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("aimesh_batch_size_requests_count{"):
            calls += float(line.rsplit(" ", 1)[1])
    return total, calls


def interrupt_on_sigterm() -> None:
    """SIGTERM and SIGINT raise ``KeyboardInterrupt``, so every server is stopped in order."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    # A shell that starts us in the background ignores SIGINT; Ctrl-C should still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def workdir(keep: bool, prefix: str) -> Iterator[Path]:
    """A scratch folder for homes and logs, removed after unless ``keep``."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        print(f"keeping logs and homes in {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy during ``seconds`` (run before a benchmark: other processes)."""
    before, t0 = machine_cpu_s(), time.monotonic()
    time.sleep(seconds)
    after = machine_cpu_s()
    if before is None or after is None:
        return float("nan")
    return (after - before) / (time.monotonic() - t0) / (os.cpu_count() or 1)


def preamble(console: Console) -> None:
    """What every wrk benchmark does first: wrk must be there, SIGTERM stops the run, and
    the environment and the machine's load are printed beside the figures to come."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    interrupt_on_sigterm()
    console.print(
        "the product as shipped; variables of this shell not passed to it: " + dropped_variables()
    )
    console.print(f"other processes used {busy():.0%} of the CPUs before the run")

"""Real aimesh processes for integration tests: model services, the registry, the gateway.

Each starts as a subprocess on free ports, with its output in a log file under the home,
and is ready when its health route answers 200 (polled with a deadline, never a fixed
sleep). A process that exits early or never gets ready fails the test with its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from aimesh.config import Settings
from aimesh.registry import LocalRegistry, Registry, push_model
from aimesh.registry.outbox import flush_outbox

WAIT_S = 60.0  # generous: a loaded 2-core machine starts processes slowly

ECHO_MODEL = '''
import time


class Model:
    """Sleeps x[0, 0] seconds, then doubles x: a signature unlike fraud's, slow on demand."""

    signature = {
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 1]}],
    }

    def load(self) -> None:
        pass

    def predict(self, inputs):
        time.sleep(float(inputs["x"][0, 0]))
        return {"y": inputs["x"] * 2}
'''
"""A trusted Python model (push it with ``trusted=True``): input x [-1, 1], output y = 2x."""

FAILING_MODEL = ECHO_MODEL.replace(
    '        time.sleep(float(inputs["x"][0, 0]))\n',
    '        raise RuntimeError("this version is broken on purpose")\n',
)
"""A trusted Python model with echo's signature that fails every call (a bad canary)."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_aimesh(
    env: dict[str, str], *args: str, ok: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``python -m aimesh ARGS`` to its end, as a user runs it; with ``ok``, it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "aimesh", *args],
        env={"COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def wait_for(predicate: Callable[[], object], timeout: float = WAIT_S) -> bool:
    """Poll ``predicate`` every 0.1 s until it is truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@dataclass
class Service:
    """A running aimesh process."""

    proc: subprocess.Popen[bytes]
    http: str
    grpc: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def start(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    http: str,
    grpc: str = "",
    ready_path: str,
    wait_s: float = WAIT_S,
) -> Service:
    """Start ``python -m aimesh ARGV`` and wait until ``http + ready_path`` answers 200."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aimesh", *argv],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    service = Service(proc, http, grpc, log)
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{argv[0]} exited early:\n{log.read_text()}")
        try:
            if httpx.get(http + ready_path, timeout=1).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            service.stop(signal.SIGKILL)
            raise AssertionError(f"{argv[0]} not ready:\n{log.read_text()}")
        time.sleep(0.1)


@dataclass
class Home:
    """An aimesh home sharing the session's NATS, and the environment its processes get."""

    settings: Settings
    env: dict[str, str]
    x: np.ndarray

    @classmethod
    def create(cls, root: Path, nats_url: str, x: np.ndarray, **env: str) -> Home:
        """A home under ``root`` on the session's NATS; ``env`` adds AIMESH_ variables."""
        settings = Settings(home=root / "home", bus={"url": nats_url})
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
        own = {"AIMESH_HOME": str(settings.home_dir), "AIMESH_BUS__URL": nats_url}
        return cls(settings, inherited | own | env, x)

    @classmethod
    def with_fraud(
        cls, root: Path, nats_url: str, data: tuple[np.ndarray, np.ndarray], **env: str
    ) -> Home:
        """:meth:`create`, its registry holding ``fraud`` 1 (champion) and 2, published."""
        x, y = data
        home = cls.create(root, nats_url, x, **env)
        registry = home.registry()
        try:
            push_fraud_models(registry, root, x, y)
            home.publish(registry)
        finally:
            registry.close()
        return home

    def registry(self, *, allow_code_artifacts: bool = False) -> LocalRegistry:
        """The home's registry; ``allow_code_artifacts`` to push trusted (code) models."""
        registry = LocalRegistry.from_settings(self.settings, actor="test")
        registry.allow_code_artifacts = allow_code_artifacts
        return registry

    def publish(self, registry: LocalRegistry) -> None:
        flush_outbox(registry.store, self.settings)

    def with_env(self, **extra: str) -> Home:
        """The same home, its processes started with more environment variables."""
        return Home(self.settings, {**self.env, **extra}, self.x)

    def serve(self, ref: str, *args: str) -> Service:
        """``aimesh serve REF`` on free ports, ready when /v2/health/ready says so."""
        http, grpc = free_port(), free_port()
        return start(
            ["serve", ref, "--http-port", str(http), "--grpc-port", str(grpc), *args],
            env=self.env,
            log=self.settings.home_dir / f"serve-{http}.log",
            http=f"http://127.0.0.1:{http}",
            grpc=f"127.0.0.1:{grpc}",
            ready_path="/v2/health/ready",
        )

    def registry_service(self) -> Service:
        """``aimesh registry serve`` on a free port (it announces itself for discovery)."""
        return self.service("registry")

    def service(self, kind: str) -> Service:
        """``aimesh KIND serve`` (registry, lake, jobs) on a free port; each announces itself."""
        port = free_port()
        return start(
            [kind, "serve", "--port", str(port)],
            env=self.env,
            log=self.settings.home_dir / f"{kind}-{port}.log",
            http=f"http://127.0.0.1:{port}",
            ready_path="/health",
        )

    def controller(self) -> Service:
        """``aimesh controller`` with its health on a free port (ready once on the bus)."""
        port = free_port()
        return start(
            ["controller", "--port", str(port)],
            env=self.env,
            log=self.settings.home_dir / f"controller-{port}.log",
            http=f"http://127.0.0.1:{port}",
            ready_path="/health",
        )

    def gateway(self) -> Service:
        """``aimesh gateway serve`` on free ports, ready once it watches discovery."""
        http, grpc = free_port(), free_port()
        return start(
            ["gateway", "serve", "--port", str(http), "--grpc-port", str(grpc)],
            env=self.env,
            log=self.settings.home_dir / f"gateway-{http}.log",
            http=f"http://127.0.0.1:{http}",
            grpc=f"127.0.0.1:{grpc}",
            ready_path="/health",
        )


def push_fraud_models(registry: Registry, folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Two versions of ``fraud``: 1 (logistic regression, alias champion), 2 (boosted trees)."""
    import skops.io as sio
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    v1, v2 = folder / "v1.skops", folder / "v2.skops"
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), v1)
    sio.dump(HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y), v2)
    push_model(registry, "fraud", v1, aliases=["champion"])
    push_model(registry, "fraud", v2)

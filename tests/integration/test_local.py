"""``aimesh up`` as a user runs it: a real supervisor, registry and model replicas.

Stacks here run without the gateway (``services.gateway: false``) and on the session's
NATS server (``bus.url``), so they start in seconds and depend on nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from _services import run_aimesh

from aimesh.bus import ServiceInstance, connect, list_instances
from aimesh.config import Settings
from aimesh.registry import LocalRegistry, push_model

WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rpartition(")")[2].split()[:1] == ["Z"])


def _wait_for(predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s: {predicate}")


@dataclass
class Project:
    """A project file for a stack on a home that holds the fraud model."""

    file: Path
    home: Path
    nats_url: str
    env: dict[str, str]

    def aimesh(
        self, *args: str, ok: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return run_aimesh(self.env, *args, ok=ok, timeout=timeout)

    def status(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(
            self.aimesh("status", "--json", "-f", str(self.file)).stdout
        )
        return report

    def processes(self) -> dict[str, dict[str, Any]]:
        return {p["process"]["name"]: p for p in self.status()["processes"]}

    def discovered(self) -> list[ServiceInstance]:
        async def main() -> list[ServiceInstance]:
            async with await connect(self.nats_url, timeout=2, name="test") as bus:
                return await list_instances(bus)

        return asyncio.run(main())


@pytest.fixture(scope="module")
def fraud_home(tmp_path_factory: pytest.TempPathFactory, fraud_skops: Path, nats_url: str) -> Path:
    home = tmp_path_factory.mktemp("local") / "home"
    registry = LocalRegistry.from_settings(Settings(home=home, bus={"url": nats_url}), actor="test")
    push_model(registry, "fraud", fraud_skops, aliases=["champion"])
    registry.close()
    return home


def _project(home: Path, nats_url: str, folder: Path, services: dict[str, Any]) -> Project:
    file = folder / "aimesh.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "home": str(home),
                "bus": {"url": nats_url},
                "registry": {"port": _free_port()},
                "serving": {"drain_timeout_s": 2},
                "services": {
                    "lake": False,
                    "jobs": False,
                    "controller": False,
                    "workers": [],
                    **services,
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    return Project(file, home, nats_url, {**env, "COLUMNS": "200"})


@pytest.fixture
def project(fraud_home: Path, nats_url: str, tmp_path: Path) -> Iterator[Project]:
    """Registry and two replicas of fraud@champion; stopped after the test whatever happens."""
    models = [{"ref": "fraud@champion", "replicas": 2}]
    running = _project(
        fraud_home, nats_url, tmp_path, {"registry": True, "gateway": False, "models": models}
    )
    yield running
    running.aimesh("down", "-f", str(running.file), ok=False)


def test_up_status_restart_and_down(project: Project, fraud_data: tuple[np.ndarray, Any]) -> None:
    started = project.aimesh("up", "--detach", "-f", str(project.file))
    assert "fraud" in started.stdout and "ready" in started.stdout

    report = project.status()
    assert report["running"] is True
    supervisor = report["stack"]["supervisor_pid"]
    processes = {p["process"]["name"]: p for p in report["processes"]}
    assert list(processes) == ["registry", "fraud.1", "fraud.2"]
    assert {p["health"] for p in processes.values()} == {"ready"}
    assert {p["discovered"] for p in processes.values()} == {True}
    assert [processes[n]["version"] for n in ("fraud.1", "fraud.2")] == ["1", "1"]
    replica = processes["fraud.1"]["process"]
    assert replica["http_port"] != processes["fraud.2"]["process"]["http_port"]

    again = project.aimesh("up", "--detach", "-f", str(project.file), ok=False)
    assert again.returncode == 1 and "already running" in again.stderr

    # A replica killed outright comes back: new pid, same ports, ready and discovered again.
    old_pid = replica["pid"]
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        now = project.processes()["fraud.1"]
        back = now["process"]["pid"] not in (None, old_pid) and now["health"] == "ready"
        return now if back and now["discovered"] else None

    now = _wait_for(restarted)
    assert now["process"]["restarts"] == 1
    assert (now["process"]["http_port"], now["process"]["grpc_port"]) == (
        replica["http_port"],
        replica["grpc_port"],
    )
    port = replica["http_port"]

    def only_the_new_entry() -> bool:
        # The killed process could not delete its key: it expires with its TTL (6 s).
        entries = [i for i in project.discovered() if i.rest_url == replica["rest_url"]]
        return bool(entries) and {i.pid for i in entries} == {now["process"]["pid"]}

    _wait_for(only_the_new_entry)
    x, _ = fraud_data
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": list(x[0])}]
    }
    answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/fraud/infer", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"

    log = project.aimesh("logs", "fraud.1", "--file", str(project.file), "-n", "200").stdout
    assert "aimesh up: started fraud.1" in log and "aimesh up: restarted fraud.1" in log
    both = project.aimesh("logs", "fraud", "--file", str(project.file)).stdout
    assert "fraud.1 |" in both and "fraud.2 |" in both

    # Down: no process, no discovery entry, no state left; the home says nothing runs.
    pids = {supervisor, old_pid} | {p["process"]["pid"] for p in project.processes().values()}
    ports = {p["process"]["http_port"] for p in processes.values()}
    stopped = project.aimesh("down", "-f", str(project.file))
    assert "stopped the stack" in stopped.stdout
    assert [pid for pid in pids if _alive(pid)] == []
    left = [
        i for i in project.discovered() if i.rest_url and int(i.rest_url.rsplit(":", 1)[1]) in ports
    ]
    assert left == []
    assert not (project.home / "run" / "stack.json").exists()
    assert project.status() == {
        "running": False,
        "home": str(project.home),
        "stack": None,
        "bus": None,
        "processes": [],
    }
    assert "nothing was running" in project.aimesh("down", "-f", str(project.file)).stdout


def test_ctrl_c_stops_the_stack_in_reverse_order(
    fraud_home: Path, nats_url: str, tmp_path: Path
) -> None:
    services = {"registry": True, "gateway": False, "models": [{"ref": "fraud@1"}]}
    project = _project(fraud_home, nats_url, tmp_path, services)
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "aimesh", "up", "-f", str(project.file)],
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: project.status()["stack"] and "Ctrl-C" in output.read_text())
        pids = [p["process"]["pid"] for p in project.status()["processes"]]
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
            project.aimesh("down", "-f", str(project.file), ok=False)
    text = output.read_text()
    assert text.index("stopping fraud.1") < text.index("stopped fraud.1")
    assert text.index("stopped fraud.1") < text.index("stopping registry")
    assert [pid for pid in pids if _alive(pid)] == []
    assert project.status()["stack"] is None


def test_a_broken_project_file_is_an_error_at_its_lines(
    fraud_home: Path, nats_url: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        f"home: {fraud_home}\n"  # 1
        "services:\n"  # 2
        "  models:\n"  # 3
        "    - ref: fraud@champion\n"  # 4
        "      replicas: 0\n"  # 5
        "gateway:\n"  # 6
        "  prot: 8080\n"  # 7
    )
    project = _project(fraud_home, nats_url, tmp_path, {})
    result = project.aimesh("up", "--detach", "-f", str(broken), ok=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"error: {broken}:5: services.models.0.replicas: must be at least 1" in lines
    assert any(
        f"error: {broken}:7: gateway.prot: unknown setting (did you mean port?)" in line
        for line in lines
    )
    assert "Traceback" not in result.stderr
    assert not (fraud_home / "run" / "stack.json").exists()


def test_init_writes_a_starter_that_loads_and_is_not_overwritten(tmp_path: Path) -> None:
    project = _project(tmp_path / "home", "nats://unused:1", tmp_path, {})
    target = tmp_path / "new" / "aimesh.yaml"
    project.aimesh("init", str(target))
    assert "services:" in target.read_text()
    refused = project.aimesh("init", str(target), ok=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    project.aimesh("init", str(target), "--force")
    status = project.aimesh("status", "-f", str(target))
    assert "nothing is running" in status.stdout


# -- the bus under a running stack -----------------------------------------------------------


@dataclass
class BusStack:
    """A running stack on its home's embedded bus: registry, jobs, a noop worker, gateway."""

    project: Project

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.project.home / "run" / "stack.json").read_text())
        return state

    def bus_record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((self.project.home / "bus" / "server.json").read_text())
        return record

    def url(self, name: str) -> str:
        return next(str(p["rest_url"]) for p in self.state()["processes"] if p["name"] == name)

    def submit(self, kind: str, payload: dict[str, Any]) -> str:
        answer = httpx.post(
            self.url("jobs") + "/api/jobs", json={"kind": kind, "payload": payload}, timeout=30
        )
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
        return job_id

    def succeeded(self, job_id: str) -> bool:
        job = httpx.get(f"{self.url('jobs')}/api/jobs/{job_id}", timeout=10).json()
        assert job["state"] in ("queued", "running", "succeeded"), job
        return bool(job["state"] == "succeeded")

    @contextlib.contextmanager
    def bus_killed_while_paused(self) -> Iterator[dict[str, Any]]:
        """SIGKILL the bus while the supervisor is stopped (SIGSTOP, then SIGCONT on leaving),
        so that nothing brings the bus back before the test has looked; yields its record."""
        supervisor, record = self.state()["supervisor_pid"], self.bus_record()
        os.kill(supervisor, signal.SIGSTOP)
        try:
            os.kill(record["pid"], signal.SIGKILL)
            _wait_for(lambda: not _alive(record["pid"]))
            yield record
        finally:
            os.kill(supervisor, signal.SIGCONT)


@pytest.fixture(scope="module")
def bus_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusStack]:
    folder = tmp_path_factory.mktemp("bus-stack")
    file = folder / "aimesh.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "home": str(folder / "home"),
                "registry": {"port": 0},
                "jobs": {"port": 0},
                "gateway": {"port": 0, "grpc_port": 0},
                "serving": {"drain_timeout_s": 2},
                "services": {"lake": False, "workers": [{"kind": "noop"}], "models": []},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    project = Project(file, folder / "home", "", {**env, "COLUMNS": "200"})
    project.aimesh("up", "--detach", "-f", str(file))
    try:
        yield BusStack(project)
    finally:
        project.aimesh("down", "--bus", "-f", str(file), ok=False)


def test_a_killed_bus_is_not_ready_then_restarted_and_loses_no_job(bus_stack: BusStack) -> None:
    project = bus_stack.project
    old = bus_stack.bus_record()
    # No worker runs `sleep` jobs: this one waits in the queue through the outage.
    waiting = bus_stack.submit("sleep", {"seconds": 0})

    with bus_stack.bus_killed_while_paused():
        report = project.status()
        health = {p["process"]["name"]: p["health"] for p in report["processes"]}
        jobs = httpx.get(bus_stack.url("jobs") + "/health", timeout=10)
        jobs_live = httpx.get(bus_stack.url("jobs") + "/health/live", timeout=10)
        gateway_live = httpx.get(bus_stack.url("gateway") + "/v2/health/live", timeout=10)
    # Those that cannot work without the bus say so; the registry needs only its database.
    assert report["bus"] == "down"
    assert health == {
        "registry": "ready",
        "jobs": "not ready",
        "worker-noop.1": "not ready",
        "controller": "not ready",
        "gateway": "not ready",
    }
    assert jobs.status_code == 503 and jobs.json()["checks"]["bus"].startswith("lost the bus")
    assert jobs_live.status_code == gateway_live.status_code == 200

    # The supervisor, running again, restarts the bus on its port; everything reconnects.
    def all_ready() -> bool:
        now = project.status()
        return now["bus"] == "ready" and {p["health"] for p in now["processes"]} == {"ready"}

    _wait_for(all_ready)
    new = bus_stack.bus_record()
    assert new["pid"] != old["pid"] and new["url"] == old["url"]
    assert {p["process"]["restarts"] for p in project.status()["processes"]} == {0}

    # A job submitted now runs; the one queued before the kill runs once a worker takes it.
    after = bus_stack.submit("noop", {})
    _wait_for(lambda: bus_stack.succeeded(after))
    log = project.home / "logs" / "worker-sleep.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "aimesh", "worker", "sleep"],
            env={**project.env, "AIMESH_CONFIG": str(project.file)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: bus_stack.succeeded(waiting))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    # Discovery was declared again: every process is back in it, and the gateway watches the
    # new bucket (the old watch would hear nothing, and its routes would age out).
    _wait_for(lambda: {p["discovered"] for p in project.status()["processes"]} == {True})
    gateway_log = project.home / "logs" / "gateway.log"
    _wait_for(lambda: "watching discovery afresh" in gateway_log.read_text())
    routed = httpx.get(bus_stack.url("gateway") + "/api/jobs", timeout=10)
    assert routed.status_code == 200, routed.text


def test_the_registry_is_not_ready_while_its_database_is_gone(bus_stack: BusStack) -> None:
    health = bus_stack.url("registry") + "/health"
    database = bus_stack.project.home / "registry.db"
    aside = database.with_name("registry.db.aside")
    database.rename(aside)
    try:
        gone = httpx.get(health, timeout=10)
        live = httpx.get(bus_stack.url("registry") + "/health/live", timeout=10)
    finally:
        aside.rename(database)
    assert gone.status_code == 503, gone.text
    assert gone.json() == {
        "status": "unavailable",
        "checks": {"database": f"the database file {database} is gone"},
    }
    assert live.status_code == 200
    back = httpx.get(health, timeout=10)
    assert (back.status_code, back.json()["checks"]) == (200, {"database": "ok"})


def test_down_returns_when_the_bus_is_dead(bus_stack: BusStack) -> None:
    project = bus_stack.project
    pids = [bus_stack.state()["supervisor_pid"]]
    pids += [p["pid"] for p in bus_stack.state()["processes"]]
    # Its port taken, the bus cannot come back: the stack stops without it.
    holder = socket.socket()
    with bus_stack.bus_killed_while_paused() as record:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Seldom, a socket of the machine holds it already: then the bus cannot have it either.
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", int(record["url"].rsplit(":", 1)[1])))
            holder.listen()
    try:
        stopped = project.aimesh("down", "-f", str(project.file), timeout=90)
    finally:
        holder.close()
    assert "stopped the stack" in stopped.stdout
    assert [pid for pid in pids if _alive(pid)] == []
    assert not (project.home / "run" / "stack.json").exists()

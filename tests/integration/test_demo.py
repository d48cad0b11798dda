"""`make run` runs `aimesh demo`: the whole path a new user sees first, end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aimesh.cli.demo import DEMO_STOP_S


@pytest.mark.timeout(900)  # the whole platform, from a cold start, then its stop
def test_demo_ingests_trains_on_a_worker_runs_the_stack_and_predicts_three_ways(
    tmp_path: Path,
) -> None:
    """``make run``, as a user runs it: then the bus goes away, and SIGTERM still stops it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env |= {"AIMESH_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    # Port 0: any free port, so a stack someone runs on this machine is left alone.
    env |= {
        "AIMESH_REGISTRY__PORT": "0",
        "AIMESH_LAKE__PORT": "0",
        "AIMESH_JOBS__PORT": "0",
        "AIMESH_GATEWAY__PORT": "0",
        "AIMESH_GATEWAY__GRPC_PORT": "0",
    }
    output = tmp_path / "demo.out"
    project = tmp_path / "home" / "demo" / "aimesh.yaml"
    with output.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "aimesh", "demo", "--rows", "3000"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 300
        while "the stack runs" not in output.read_text() and time.monotonic() < deadline:
            shown = project.read_text() if project.exists() else "(no project file)"
            assert demo.poll() is None, output.read_text()[-3000:] + shown
            time.sleep(0.5)
        out = output.read_text()
        assert "the stack runs" in out, out[-3000:]
        assert "ingested 3000 rows" in out and "as transactions@0" in out
        assert "trained   fraud@1 by a training job on a worker" in out
        assert "alias moved: fraud@champion -> 1" in out
        assert "predictions through the gateway" in out
        assert "?async=true -> 202, job " in out
        assert out.count(" model ") >= 2  # two replicas in the stack table
        assert out.count(" worker ") >= 2  # the inference and the training worker

        # The bus goes away under the running stack; the demo still stops on SIGTERM.
        subprocess.run(
            [sys.executable, "-m", "aimesh", "bus", "stop"], env=env, timeout=60, check=True
        )
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=DEMO_STOP_S + 30) == 0, output.read_text()[-3000:]
        out = output.read_text()
        assert "stopped the stack" in out
        stack = tmp_path / "home" / "run" / "stack.json"
        assert not stack.exists()  # down removed it
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        subprocess.run(
            [sys.executable, "-m", "aimesh", "bus", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )


@pytest.mark.timeout(600)
def test_demo_rollout_rolls_a_broken_canary_back_and_promotes_a_good_one(tmp_path: Path) -> None:
    """``aimesh demo rollout`` as the README shows it: decisions printed, no client failed,
    and nothing left running (its stack and its own bus stopped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env |= {"AIMESH_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "aimesh", "demo", "rollout", "--interval", "3"],
        env=env, capture_output=True, text=True, timeout=500, cwd=tmp_path,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "rolled_back" in out and "error rate 100.00%" in out
    assert out.count("step ") >= 2 and "every step passed" in out
    clients = next(line for line in out.splitlines() if line.startswith("clients"))
    assert " x 200" in clients and " x 5" not in clients and "no answer" not in clients, clients
    home = tmp_path / "home" / "demo-rollout" / "home"
    status = subprocess.run(
        [sys.executable, "-m", "aimesh", "bus", "status"],
        env={**env, "AIMESH_HOME": str(home)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "no embedded bus is running" in (status.stdout + status.stderr).lower(), status.stdout

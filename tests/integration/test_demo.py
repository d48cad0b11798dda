"""`make run` runs `aimesh demo`: the whole path a new user sees first, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_ingests_trains_on_a_worker_runs_the_stack_and_predicts_three_ways(
    tmp_path: Path,
) -> None:
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
    try:
        result = subprocess.run(
            [sys.executable, "-m", "aimesh", "demo", "--once", "--rows", "3000"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        project = tmp_path / "home" / "demo" / "aimesh.yaml"
        shown = project.read_text() if project.exists() else "(no project file)"
        assert result.returncode == 0, result.stdout + result.stderr[-3000:] + shown
        out = result.stdout
        assert "ingested 3000 rows" in out and "as transactions@0" in out
        assert "trained   fraud@1 by a training job on a worker" in out
        assert "alias moved: fraud@champion -> 1" in out
        assert "predictions through the gateway" in out
        assert "?async=true -> 202, job " in out
        assert out.count(" model ") >= 2  # two replicas in the stack table
        assert out.count(" worker ") >= 2  # the inference and the training worker
        assert "stopped the stack" in out
        stack = tmp_path / "home" / "run" / "stack.json"
        assert not stack.exists()  # down removed it
    finally:
        subprocess.run(
            [sys.executable, "-m", "aimesh", "bus", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )

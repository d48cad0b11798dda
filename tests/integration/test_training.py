"""Training as a job: ``aimesh train`` submits, a real ``aimesh worker training`` subprocess
reads a lake snapshot, fits, evaluates and registers the model with lineage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from aimesh.bus import connect
from aimesh.config import JobsSettings, load_settings
from aimesh.errors import JobFailed
from aimesh.jobs import JobClient, JobSpec
from aimesh.lake import open_lake
from aimesh.registry import LocalRegistry

WAIT_S = 45.0


def _env(url: str, home: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    return {
        **inherited,
        "AIMESH_HOME": str(home),
        "AIMESH_BUS__URL": url,
        "AIMESH_JOBS__ACK_WAIT_S": "5",
        "AIMESH_JOBS__BACKOFF_S": "0.05",
        "AIMESH_JOBS__PROGRESS_INTERVAL_S": "0.1",
        "COLUMNS": "200",
    }


@pytest.fixture
def home(tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with dataset ``tx`` (version 0: fraud-like, f0..f29 + label) and a worker."""
    from aimesh.examples import make_fraud_dataset

    home = tmp_path / "home"
    env = _env(nats_url, home)
    for key in [k for k in os.environ if k.startswith("AIMESH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AIMESH_HOME", str(home))
    monkeypatch.setenv("AIMESH_BUS__URL", nats_url)
    x, y = make_fraud_dataset(2_000, seed=3)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(x.shape[1])}, "label": y})
    open_lake(load_settings()).write("tx", table)

    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "aimesh", "worker", "training"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield home
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        print(log.read_text())


def _aimesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aimesh", *args],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_train_cli_registers_the_next_version_with_metrics_and_lineage(home: Path) -> None:
    done = _aimesh(
        "train", "fraud", "--dataset", "tx@0", "--trainer", "sklearn:LogisticRegression",
        "--target", "label", "--param", "max_iter=300", "--alias", "candidate", "--wait",
        "--timeout", str(WAIT_S),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered fraud@1" in done.stdout
    assert "auc:" in done.stdout

    registry = LocalRegistry.from_settings(load_settings(), actor="test")
    version = registry.get_version("fraud", 1)
    assert version.lineage.dataset == "tx@0"
    assert version.lineage.trainer == "sklearn:LogisticRegression"
    assert version.lineage.params == {"max_iter": 300}
    assert version.lineage.job_id and version.lineage.code_version
    assert {"auc", "accuracy", "f1", "log_loss"} <= set(version.metrics)
    assert version.metrics["auc"] > 0.7
    assert version.framework == "sklearn"
    assert version.signature is not None


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"trainer": "sklearn:NoSuchModel", "target": "label"}, "NoSuchModel"),
        ({"trainer": "nowhere.at_all:Model", "target": "label"}, "nowhere"),
        ({"trainer": "sklearn:LogisticRegression", "target": "fraud"}, "no target column"),
    ],
    ids=["unknown-sklearn", "bad-import-path", "missing-target"],
)
def test_bad_requests_fail_at_once_with_a_clear_error(
    home: Path, nats_url: str, payload: dict[str, str], says: str
) -> None:
    async def main() -> None:
        async with await connect(nats_url, timeout=10, name="test") as bus:
            client = await JobClient.open(bus, JobsSettings())
            try:
                job = await client.submit(
                    JobSpec(
                        kind="training",
                        payload={"model": "fraud", "dataset": "tx@0", **payload},
                        max_attempts=5,
                    )
                )
                with pytest.raises(JobFailed) as failed:
                    await client.wait(job.id, timeout=WAIT_S)
                ended = await client.get(job.id)
            finally:
                await client.close()
        assert failed.value.state == "failed"
        assert failed.value.error_code == "job_rejected"
        assert says in (failed.value.error_message or "")
        assert ended.attempts == 1  # not retried

    asyncio.run(main())

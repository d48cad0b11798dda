"""Training as a job: ``aimesh train`` submits, a real ``aimesh worker training`` subprocess
reads a lake snapshot, fits, evaluates and registers the model with lineage; what it
registers loads and predicts through the aimesh runtimes without trust."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aimesh.auth import Identity
from aimesh.bus import connect
from aimesh.config import JobsSettings, load_settings
from aimesh.errors import JobFailed
from aimesh.jobs import JobClient, JobSpec
from aimesh.lake import open_lake
from aimesh.registry import LocalRegistry, ModelVersion
from aimesh.runtimes import load_runtime

WAIT_S = 45.0
SHOP_ROWS = 300

# Installed on the worker's path by the operator; jobs only name these functions.
USER_TRAINERS = """
import os
import time
from pathlib import Path

from lightgbm import LGBMClassifier
from sklearn.linear_model import Ridge

from aimesh.training import trainer


@trainer
def boosted(x, y, params):
    assert x.dtype == "float64" and x.ndim == 2, (x.dtype, x.shape)
    return LGBMClassifier(n_estimators=int(params["rounds"]), verbose=-1).fit(x, y)


@trainer
def ridge(x, y, params):
    return Ridge(alpha=float(params.get("alpha", 1.0))).fit(x, y)


def helper(x, y, params):
    return Ridge().fit(x, y)


@trainer
def gated(x, y, params):
    # Says it is fitting, then fits only once the test creates the gate file: a fit that
    # outlives its job's deadline.
    gate = Path(os.environ["SHOP_GATE"])
    gate.with_suffix(".fitting").touch()
    while not gate.exists():
        time.sleep(0.02)
    return Ridge().fit(x, y)
"""


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


def _shop() -> pa.Table:
    """f0..f3, a class ``label`` (0/1), an amount to regress, and ``is_test`` on every 5th row."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(SHOP_ROWS, 4))
    return pa.table(
        {
            **{f"f{i}": x[:, i] for i in range(4)},
            "label": (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64),
            "amount": 3 * x[:, 0] - x[:, 2] + rng.normal(scale=0.1, size=SHOP_ROWS),
            "is_test": np.arange(SHOP_ROWS) % 5 == 0,
        }
    )


@pytest.fixture
def home(tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with datasets ``tx`` (version 0: fraud-like, f0..f29 + label) and ``shop``
    (tiny, see :func:`_shop`), and a worker with the module ``shop_trainers`` on its path."""
    from aimesh.examples import make_fraud_dataset

    home = tmp_path / "home"
    code = tmp_path / "usercode"
    code.mkdir()
    (code / "shop_trainers.py").write_text(USER_TRAINERS)
    env = _env(nats_url, home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    env["SHOP_GATE"] = str(tmp_path / "gate")
    for key in [k for k in os.environ if k.startswith("AIMESH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AIMESH_HOME", str(home))
    monkeypatch.setenv("AIMESH_BUS__URL", nats_url)
    x, y = make_fraud_dataset(2_000, seed=3)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(x.shape[1])}, "label": y})
    lake = open_lake(load_settings())
    lake.write("tx", table)
    lake.write("shop", _shop())

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


BAD_REQUESTS: dict[str, tuple[dict[str, object], str]] = {
    "unknown-sklearn": ({"trainer": "sklearn:NoSuchModel", "target": "label"}, "NoSuchModel"),
    "bad-import-path": ({"trainer": "nowhere.at_all:Model", "target": "label"}, "nowhere"),
    "class-not-allowed": ({"trainer": "os:system", "target": "label"}, "is not allowed"),
    "path-param": (
        {
            "trainer": "sklearn:AgglomerativeClustering",
            "target": "label",
            "params": {"memory": "/tmp/c"},
        },
        "parameter 'memory' is refused",
    ),
    "missing-target": (
        {"trainer": "sklearn:LogisticRegression", "target": "fraud"},
        "no target column",
    ),
    "function-bad-module": (
        {"trainer": "function:no_such_pkg.train:fit", "target": "label"},
        "No module named 'no_such_pkg'",
    ),
    "function-bad-name": (
        {"trainer": "function:shop_trainers:nowhere", "target": "label"},
        "has no attribute 'nowhere'",
    ),
    "function-not-marked": (
        {"trainer": "function:shop_trainers:helper", "target": "label"},
        "shop_trainers:helper is not marked as a trainer",
    ),
    "function-not-a-trainer": (
        {"trainer": "function:os:system", "target": "label"},
        "os:system is not marked as a trainer",
    ),
    "metric-of-regressors": (
        {"trainer": "sklearn:LogisticRegression", "target": "label", "metrics": ["rmse"]},
        "metric rmse does not apply to sklearn:LogisticRegression, a classifier",
    ),
    "unknown-metric": (
        {"trainer": "sklearn:LogisticRegression", "target": "label", "metrics": ["mape"]},
        "unknown metric 'mape'",
    ),
    "missing-split-column": (
        {"trainer": "sklearn:LogisticRegression", "target": "label", "split": "column:x"},
        "no split column 'x'",
    ),
    "bad-split": (
        {"trainer": "xgboost:XGBClassifier", "target": "label", "split": "random:2"},
        "split fraction must be in (0, 1)",
    ),
}


def test_bad_requests_fail_at_once_with_a_clear_error(home: Path, nats_url: str) -> None:
    async def main() -> dict[str, tuple[JobFailed, int]]:
        outcomes: dict[str, tuple[JobFailed, int]] = {}
        async with await connect(nats_url, timeout=10, name="test") as bus:
            client = await JobClient.open(bus, JobsSettings())
            try:
                for case, (payload, _) in BAD_REQUESTS.items():
                    job = await client.submit(
                        JobSpec(
                            kind="training",
                            payload={"model": "fraud", "dataset": "tx@0", **payload},
                            max_attempts=5,
                        )
                    )
                    with pytest.raises(JobFailed) as failed:
                        await client.wait(job.id, timeout=WAIT_S)
                    outcomes[case] = (failed.value, (await client.get(job.id)).attempts)
            finally:
                await client.close()
        return outcomes

    for case, (failed, attempts) in asyncio.run(main()).items():
        says = BAD_REQUESTS[case][1]
        assert failed.state == "failed", case
        assert failed.error_code == "job_rejected", (case, failed.error_message)
        assert says in (failed.error_message or ""), (case, failed.error_message)
        assert attempts == 1, case  # not retried


def _models() -> list[str]:
    registry = LocalRegistry.from_settings(load_settings(), actor="test")
    try:
        return sorted(m.name for m in registry.list_models())
    finally:
        registry.close()


def test_an_attempt_past_its_timeout_registers_nothing_when_its_fit_ends_later(
    home: Path, nats_url: str, tmp_path: Path
) -> None:
    fitting = (tmp_path / "gate").with_suffix(".fitting")

    async def main() -> JobFailed:
        async with await connect(nats_url, timeout=10, name="test") as bus:
            client = await JobClient.open(bus, JobsSettings())
            try:
                # A first job warms the worker up (imports), so that the next one reaches
                # its fit well within its timeout.
                warm = {
                    "model": "warm", "dataset": "shop@0", "target": "amount",
                    "trainer": "function:shop_trainers:ridge",
                }  # fmt: skip
                job = await client.submit(JobSpec(kind="training", payload=warm))
                await client.wait(job.id, timeout=WAIT_S)
                gated = {**warm, "model": "gated", "alias": "live"}
                gated["trainer"] = "function:shop_trainers:gated"
                spec = JobSpec(kind="training", payload=gated, timeout_s=3, max_attempts=1)
                job = await client.submit(spec)
                with pytest.raises(JobFailed) as failed:
                    await client.wait(job.id, timeout=WAIT_S)
                return failed.value
            finally:
                await client.close()

    failed = asyncio.run(main())
    assert failed.error_code == "deadline_exceeded", failed.error_message
    assert fitting.exists()  # the deadline passed while the fit ran in its thread
    (tmp_path / "gate").touch()  # the fit ends now, after its job failed
    log = tmp_path / "worker.log"
    # The worker logs when the fence stops the late push; then the thread has ended.
    fenced = "is fenced (ran past its timeout of 3s): registering gated as @live not done"
    assert _eventually(lambda: fenced in log.read_text()), log.read_text()
    assert _models() == ["warm"]  # no version of gated, so no alias either


def test_a_submitter_without_the_write_scope_registers_nothing_and_one_with_it_is_recorded(
    home: Path, nats_url: str
) -> None:
    async def main() -> JobFailed:
        async with await connect(nats_url, timeout=10, name="test") as bus:
            client = await JobClient.open(bus, JobsSettings())
            try:
                payload = {
                    "model": "shop", "dataset": "shop@0", "trainer": "sklearn:Ridge",
                    "target": "amount", "alias": "champion",
                }  # fmt: skip
                job = await client.submit(
                    JobSpec(kind="training", payload=payload, max_attempts=3),
                    identity=Identity.of("dashboard", ["read", "infer"]),
                )
                with pytest.raises(JobFailed) as failed:
                    await client.wait(job.id, timeout=WAIT_S)
                assert (await client.get(job.id)).attempts == 1  # not retried
                assert "shop" not in _models()
                # With the write scope it registers, and the registry records the submitter.
                job = await client.submit(
                    JobSpec(kind="training", payload=payload, max_attempts=1),
                    identity=Identity.of("ci", ["write"]),
                )
                await client.wait(job.id, timeout=WAIT_S)
                return failed.value
            finally:
                await client.close()

    failed = asyncio.run(main())
    assert failed.error_code == "forbidden", failed.error_message
    registry = LocalRegistry.from_settings(load_settings(), actor="test")
    try:
        actors = {entry.actor for entry in registry.history("shop")}
    finally:
        registry.close()
    assert actors == {"ci"}, actors


def _eventually(check: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _served(registry: LocalRegistry, version: ModelVersion) -> dict[str, np.ndarray]:
    """What the registered artifact predicts for the shop's rows, loaded without trust."""
    runtime = load_runtime(version.framework, registry.fetch_artifact(version))
    shop = _shop()
    features = version.lineage.extra["features"]
    rows = np.column_stack([shop.column(c).to_numpy().astype(np.float64) for c in features])
    return runtime.predict({"input-0": rows})


@pytest.mark.parametrize(
    ("trainer", "target", "framework"),
    [
        ("xgboost:XGBClassifier", "label", "xgboost"),
        ("lightgbm:LGBMClassifier", "label", "lightgbm"),
        ("xgboost:XGBRegressor", "amount", "xgboost"),
        ("lightgbm:LGBMRegressor", "amount", "lightgbm"),
    ],
)
def test_boosters_are_registered_natively_and_serve_without_trust(
    home: Path, trainer: str, target: str, framework: str
) -> None:
    extra = ["--param", "verbose=-1"] if framework == "lightgbm" else []
    done = _aimesh(
        "train", "shop", "--dataset", "shop@0", "--trainer", trainer, "--target", target,
        "--param", "n_estimators=20", *extra, "--wait", "--timeout", str(WAIT_S),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"registered shop@1 ({framework})" in done.stdout

    registry = LocalRegistry.from_settings(load_settings(), actor="test")
    version = registry.get_version("shop", 1)
    assert version.framework == framework
    assert not version.trusted and version.trusted_types == []
    assert version.lineage.trainer == trainer
    assert version.lineage.params["n_estimators"] == 20
    served = _served(registry, version)
    truth = _shop().column(target).to_numpy()
    if target == "label":
        assert {"auc", "accuracy", "f1", "log_loss"} == set(version.metrics)
        assert version.metrics["auc"] > 0.8
        assert float(np.mean(served["label"] == truth)) > 0.8
        np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0)
    else:
        assert {"rmse", "mae", "r2"} == set(version.metrics)
        assert version.metrics["r2"] > 0.7
        assert float(np.corrcoef(served["prediction"], truth)[0, 1]) > 0.9


@pytest.mark.parametrize(
    ("function", "params", "framework", "metric"),
    [
        ("boosted", ["rounds=15"], "lightgbm", "auc"),
        ("ridge", ["alpha=0.5"], "sklearn", "rmse"),
    ],
)
def test_a_marked_function_on_the_worker_trains_and_its_model_is_saved_by_its_type(
    home: Path, function: str, params: list[str], framework: str, metric: str
) -> None:
    target = "label" if metric == "auc" else "amount"
    param_args = [arg for p in params for arg in ("--param", p)]
    done = _aimesh(
        "train", "shop", "--dataset", "shop@0", "--trainer", f"function:shop_trainers:{function}",
        "--target", target, *param_args, "--metric", metric, "--wait", "--timeout", str(WAIT_S),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"registered shop@1 ({framework})" in done.stdout

    registry = LocalRegistry.from_settings(load_settings(), actor="test")
    version = registry.get_version("shop", 1)
    assert version.framework == framework
    assert set(version.metrics) == {metric}
    assert version.lineage.trainer == f"function:shop_trainers:{function}"
    assert not version.trusted
    served = _served(registry, version)
    assert set(served) == ({"label", "probabilities"} if metric == "auc" else {"prediction"})


def test_a_column_split_holds_out_the_marked_rows_and_is_no_feature(home: Path) -> None:
    done = _aimesh(
        "train", "shop", "--dataset", "shop@0", "--trainer", "sklearn:LogisticRegression",
        "--target", "label", "--split", "column:is_test", "--metric", "auc",
        "--metric", "accuracy", "--wait", "--timeout", str(WAIT_S),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "auc:" in done.stdout and "f1:" not in done.stdout

    version = LocalRegistry.from_settings(load_settings(), actor="test").get_version("shop", 1)
    assert set(version.metrics) == {"auc", "accuracy"}
    assert version.lineage.extra["split"] == "column:is_test"
    assert version.lineage.extra["test_rows"] == SHOP_ROWS // 5
    assert version.lineage.extra["train_rows"] == SHOP_ROWS - SHOP_ROWS // 5
    assert version.lineage.extra["features"] == ["f0", "f1", "f2", "f3", "amount"]
    assert version.signature is not None
    assert version.signature.inputs[0].shape == [-1, 5]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--metric", "precision"], "unknown metric 'precision'; known: auc, accuracy"),
        (["--split", "kfold:5"], "split 'kfold:5' must be random:FRACTION"),
        (["--split", "random:0.3", "--test-size", "0.3"], "--split or --test-size, not both"),
    ],
    ids=["unknown-metric", "bad-split", "split-and-test-size"],
)
def test_bad_options_are_refused_before_anything_is_submitted(
    tmp_path: Path, args: list[str], says: str
) -> None:
    # No bus, no worker: the request is refused before the CLI connects to anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    command = [sys.executable, "-m", "aimesh", "train", "shop", "--dataset", "shop@0"]
    command += ["--trainer", "sklearn:LogisticRegression", "--target", "label", *args]
    done = subprocess.run(
        command,
        env={**env, "AIMESH_HOME": str(tmp_path / "home"), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert says in done.stderr
    assert not (tmp_path / "home").exists()

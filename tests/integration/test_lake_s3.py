"""The lake and the registry's artifacts on a real S3 server (SeaweedFS), as a user runs them.

The lake is ``lake.url = s3://bucket/...`` with the storage options delta-rs needs; the
artifact store is ``registry.artifacts_url = s3://bucket/...`` with the AWS environment that
botocore (s3fs) reads. Without the ``weed`` binary these tests skip, and fail with CI=true.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from _s3 import S3Server, s3_server
from _services import run_aimesh

from aimesh.config import LakeSettings, RegistrySettings, Settings
from aimesh.errors import ArtifactTampered, SchemaMismatch
from aimesh.lake import DatasetRef, Lake, open_lake
from aimesh.registry import LocalRegistry, push_model
from aimesh.runtimes import load_runtime


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server for the module; each test works under its own prefix."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    return request.node.name.replace("[", "-").replace("]", "")


def _settings(tmp_path: Path, **sections: object) -> Settings:
    return Settings(home=tmp_path / "home", **sections)


@pytest.fixture
def lake(s3: S3Server, prefix: str, tmp_path: Path) -> Lake:
    """A lake at ``s3://bucket/PREFIX/lake``, configured as a user would: URL and options."""
    lake_settings = LakeSettings(
        url=s3.url(f"{prefix}/lake"), storage_options=s3.storage_options(), chunk_rows=1024
    )
    return open_lake(_settings(tmp_path, lake=lake_settings))


def _csv(path: Path, first: int, count: int) -> Path:
    lines = ["id,label,amount"] + [
        f"{i},{'fraud' if i % 10 == 0 else 'ok'},{i * 1.5}" for i in range(first, first + count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _keys(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


# -- the lake ------------------------------------------------------------------------------


def test_ingest_and_append_make_versions_in_the_bucket_and_time_travel_reads_them(
    lake: Lake, s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    first = lake.ingest("tx", [_csv(tmp_path / "a.csv", 0, 100)])
    second = lake.ingest("tx", [_csv(tmp_path / "b.csv", 100, 50)])

    assert (first.version, first.rows, first.created) == (0, 100, True)
    assert (second.version, second.rows, second.created) == (1, 50, False)
    assert lake.read("tx", 0).num_rows == 100
    assert lake.read("tx").num_rows == 150
    assert lake.pin("tx") == DatasetRef("tx", 1)
    info = lake.describe("tx", 0)
    assert (info.version, info.latest_version, info.rows) == (0, 1, 100)
    assert [v.rows_added for v in info.versions] == [50, 100]
    assert info.versions[0].metadata["aimesh.source"] == "b.csv"
    assert [(d.name, d.version, d.rows) for d in lake.list_datasets()] == [("tx", 1, 150)]
    keys = _keys(s3, f"{prefix}/lake/tx/")
    assert f"{prefix}/lake/tx/_delta_log/00000000000000000001.json" in keys
    assert sum(k.endswith(".parquet") for k in keys) >= 2
    assert not (tmp_path / "home" / "lake").exists()  # nothing went to the local default


def test_an_append_that_does_not_fit_leaves_the_s3_table_as_it_was(
    lake: Lake, tmp_path: Path
) -> None:
    lake.ingest("tx", [_csv(tmp_path / "a.csv", 0, 10)])
    wrong_type = tmp_path / "wrong_type.csv"
    wrong_type.write_text("id,label,amount\n1,ok,lots\n")
    late = tmp_path / "late.csv"  # the bad value is blocks after the first
    late.write_text(
        "\n".join(["id,label,amount", *(f"{i},ok,{i}.5" for i in range(20_000)), "7,ok,oops"])
    )

    with pytest.raises(SchemaMismatch, match="nothing was written"):
        lake.ingest("tx", [wrong_type])
    with pytest.raises(SchemaMismatch, match="oops"):
        lake.ingest("tx", [late])

    assert lake.describe("tx").version == 0
    assert lake.read("tx").num_rows == 10
    assert lake.ingest("tx", [_csv(tmp_path / "b.csv", 10, 5)]).version == 1


def test_sql_reads_s3_datasets_at_their_latest_or_a_given_version(lake: Lake) -> None:
    for v in range(3):
        rows = [{"id": v * 10 + i, "label": "fraud" if i < 2 else "ok"} for i in range(10)]
        lake.write("tx", pa.Table.from_pylist(rows))
    lake.write("labels", pa.table({"label": ["fraud", "ok"], "bad": [True, False]}))

    joined = lake.query(
        "select l.bad, count(*) as n from tx join labels l using (label) group by 1 order by 1"
    )
    old = lake.query("select count(*) as n from tx", versions={"tx": 0})

    assert joined.table.to_pylist() == [{"bad": False, "n": 24}, {"bad": True, "n": 6}]
    assert joined.versions == {"labels": 0, "tx": 2}
    assert old.table.to_pylist() == [{"n": 10}]
    assert old.versions == {"tx": 0}


def test_concurrent_appends_to_one_s3_table_lose_no_commit_and_know_their_version(
    lake: Lake,
) -> None:
    """delta-rs commits with S3's put-if-absent: no lock service, no unsafe rename."""
    lake.write("tx", pa.table({"w": [-1], "i": [-1]}))
    written: dict[int, str] = {}
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(4):
                data = pa.table({"w": [w], "i": [i]})
                written[lake.write("tx", data, metadata={"by": f"{w}.{i}"}).version] = f"{w}.{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    assert sorted(written) == list(range(1, 13))
    assert lake.read("tx").num_rows == 13
    history = {v.version: v.metadata.get("aimesh.by") for v in lake.history("tx")}
    assert history == {0: None, **written}


# Six writers at once, in a child process of their own so that a deadlock fails the test
# instead of hanging the suite (a process stuck with the GIL held cannot time itself out).
_MANY_WRITERS = """
import sys, threading
import pyarrow as pa
from aimesh.lake import open_lake
from aimesh.config import LakeSettings, Settings
import json, pathlib
url, options, home = sys.argv[1], json.loads(sys.argv[2]), pathlib.Path(sys.argv[3])
for round in range(6):
    settings = LakeSettings(url=f"{url}/{round}", storage_options=options)
    lake = open_lake(Settings(home=home, lake=settings))
    lake.write("tx", pa.table({"w": [-1]}))
    errors = []
    def writer(w):
        try:
            for _ in range(3):
                lake.write("tx", pa.table({"w": [w]}))
                lake.describe("tx")
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert lake.read("tx").num_rows == 19, lake.read("tx").num_rows
print("ok")
"""


def test_many_concurrent_writes_to_s3_never_deadlock(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    """delta-rs waits for the GIL on its I/O threads while some of its calls hold the GIL.

    Unbounded, six writes at once on a two-core machine deadlocked within a few rounds (in
    half the runs of this test). Its child also must not abort as it exits.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "TOKIO_WORKER_THREADS" and not k.startswith("AWS_")
    }
    argv = [s3.url(f"{prefix}/lake"), json.dumps(s3.storage_options()), str(tmp_path)]
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MANY_WRITERS, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("six concurrent writes to an S3 lake did not finish in 150 s (deadlock)")
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-3000:]


def test_a_lake_under_a_prefix_that_needs_encoding_reads_what_it_wrote(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    settings = LakeSettings(url=s3.url(f"{prefix}/my lake ü"), storage_options=s3.storage_options())
    lake = open_lake(_settings(tmp_path, lake=settings))
    lake.write("tx", pa.table({"id": [1, 2]}))

    assert lake.read("tx").num_rows == 2
    assert lake.query("select count(*) as n from tx").table.to_pylist() == [{"n": 2}]
    assert _keys(s3, f"{prefix}/my lake ü/tx/_delta_log/")


def test_an_old_version_is_described_by_its_own_commit(lake: Lake) -> None:
    for i in range(3):
        lake.write("tx", pa.table({"id": [i]}), metadata={"note": f"write {i}"})

    every = lake.history("tx")
    old = lake.describe("tx", 0, history_limit=1)

    assert [(v.version, v.metadata["aimesh.note"]) for v in every] == [
        (2, "write 2"),
        (1, "write 1"),
        (0, "write 0"),
    ]
    assert [v.version for v in old.versions] == [2]
    assert old.updated == every[-1].timestamp
    assert [v.version for v in lake.history("tx", limit=2)] == [2, 1]


# -- the lake CLI --------------------------------------------------------------------------


def _cli_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """This process's environment without aimesh's or AWS's settings, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIMESH_", "AWS_"))}
    return {**inherited, "AIMESH_HOME": str(tmp_path / "home"), "COLUMNS": "200", **env}


def test_lake_commands_ingest_list_show_and_query_an_s3_lake(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    env = _cli_env(
        tmp_path,
        AIMESH_LAKE__URL=s3.url(f"{prefix}/lake"),
        AIMESH_LAKE__STORAGE_OPTIONS=json.dumps(s3.storage_options()),
    )
    run_aimesh(env, "lake", "ingest", "tx", str(_csv(tmp_path / "a.csv", 0, 30)))
    run_aimesh(env, "lake", "ingest", "tx", str(_csv(tmp_path / "b.csv", 30, 20)))

    listed = json.loads(run_aimesh(env, "lake", "list", "--json").stdout)
    shown = run_aimesh(env, "lake", "show", "tx@0").stdout
    counted = run_aimesh(
        env, "lake", "query", "select label, count(*) as n from tx group by 1 order by 1"
    ).stdout
    at_0 = run_aimesh(env, "lake", "query", "select count(*) as n from tx", "--at", "tx=0").stdout

    assert [(d["name"], d["version"], d["rows"]) for d in listed] == [("tx", 1, 50)]
    assert "tx@0 (latest: 1)  30 rows" in shown and "amount" in shown
    assert "│ fraud │ 5  │" in counted and "│ ok    │ 45 │" in counted and "tx@1" in counted
    assert "│ 30 │" in at_0
    assert _keys(s3, f"{prefix}/lake/tx/_delta_log/")


def test_wrong_s3_credentials_are_one_clear_line_and_exit_code_1(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    options = {**s3.storage_options(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    env = _cli_env(
        tmp_path,
        AIMESH_LAKE__URL=s3.url(f"{prefix}/lake"),
        AIMESH_LAKE__STORAGE_OPTIONS=json.dumps(options),
    )

    listed = run_aimesh(env, "lake", "list", ok=False)
    ingested = run_aimesh(
        env, "lake", "ingest", "tx", str(_csv(tmp_path / "a.csv", 0, 3)), ok=False
    )

    for result in (listed, ingested):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "(store_unavailable)" in result.stderr
        assert "Traceback" not in result.stderr


def test_the_lake_service_is_ready_only_while_its_store_lets_it_in(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from aimesh.lake.app import create_app

    url = s3.url(f"{prefix}/lake")
    refused = {**s3.storage_options(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    for options, ready in ((refused, False), (s3.storage_options(), True)):
        settings = _settings(tmp_path, lake=LakeSettings(url=url, storage_options=options))
        with TestClient(create_app(settings)) as client:
            health = client.get("/health")
            live = client.get("/health/live")
        assert live.status_code == 200
        if ready:
            assert (health.status_code, health.json()["checks"]) == (200, {"store": "ok"})
        else:
            assert health.status_code == 503, health.text
            assert health.json()["checks"]["store"].startswith("cannot list the lake")


# -- the registry's artifacts --------------------------------------------------------------


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS environment of the S3 server, set for this process (botocore reads it)."""
    import s3fs

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # made with another environment, perhaps
    return s3.env()


@pytest.fixture
def registry_settings(s3: S3Server, prefix: str, tmp_path: Path) -> Settings:
    registry = RegistrySettings(
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        artifacts_url=s3.url(f"{prefix}/artifacts"),
    )
    return _settings(tmp_path, registry=registry)


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    runtime = load_runtime("sklearn", path)
    outputs = runtime.predict({"input-0": x})
    return next(iter(outputs.values()))


def test_a_model_pushed_to_s3_downloads_verified_and_loads(
    s3: S3Server,
    s3_env: dict[str, str],
    registry_settings: Settings,
    prefix: str,
    tmp_path: Path,
    fraud_skops: Path,
    fraud_data: tuple[np.ndarray, np.ndarray],
) -> None:
    sha256 = hashlib.sha256(fraud_skops.read_bytes()).hexdigest()
    registry = LocalRegistry.from_settings(registry_settings, actor="test")
    try:
        version = push_model(registry, "fraud", fraud_skops, aliases=["champion"])
        fetched = registry.fetch_artifact(version)
    finally:
        registry.close()

    assert version.artifact_sha256 == sha256
    assert _keys(s3, f"{prefix}/artifacts/") == [f"{prefix}/artifacts/sha256/{sha256[:2]}/{sha256}"]
    assert fetched.read_bytes() == fraud_skops.read_bytes()
    x = fraud_data[0][:5]
    assert _predict(fetched, x).shape[0] == 5

    # The CLI of another process, with nothing but the settings and the AWS environment.
    env = _cli_env(
        tmp_path,
        **s3_env,
        AIMESH_REGISTRY__DATABASE_URL=registry_settings.registry_database_url,
        AIMESH_REGISTRY__ARTIFACTS_URL=registry_settings.artifacts_url,
    )
    dest = tmp_path / "downloaded.skops"
    said = run_aimesh(env, "models", "download", "fraud@champion", str(dest)).stdout
    assert f"sha256 {sha256[:12]} verified" in said
    assert dest.read_bytes() == fraud_skops.read_bytes()


def test_the_artifact_store_takes_its_credentials_from_the_settings(
    s3: S3Server, prefix: str, tmp_path: Path, fraud_skops: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)  # nothing from the environment: the settings say it all
    s3fs.S3FileSystem.clear_instance_cache()
    settings = _settings(
        tmp_path,
        registry=RegistrySettings(
            database_url=f"sqlite:///{tmp_path / 'registry.db'}",
            artifacts_url=s3.url(f"{prefix}/artifacts"),
            storage_options=s3.fsspec_options(),
        ),
    )
    registry = LocalRegistry.from_settings(settings, actor="test")
    try:
        version = push_model(registry, "fraud", fraud_skops)
        assert registry.fetch_artifact(version).read_bytes() == fraud_skops.read_bytes()
    finally:
        registry.close()
    assert _keys(s3, f"{prefix}/artifacts/sha256/")


def test_an_artifact_changed_in_s3_is_refused_and_a_damaged_cache_fetched_again(
    s3: S3Server,
    s3_env: dict[str, str],
    registry_settings: Settings,
    prefix: str,
    fraud_skops: Path,
) -> None:
    registry = LocalRegistry.from_settings(registry_settings, actor="test")
    try:
        version = push_model(registry, "fraud", fraud_skops)
        sha256 = version.artifact_sha256
        cached = registry.fetch_artifact(version)
        cached.write_bytes(b"damaged")
        assert registry.fetch_artifact(version).read_bytes() == fraud_skops.read_bytes()

        key = f"{prefix}/artifacts/sha256/{sha256[:2]}/{sha256}"
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b"not the model")
        cached.unlink()
        with pytest.raises(ArtifactTampered):
            registry.fetch_artifact(version)
    finally:
        registry.close()

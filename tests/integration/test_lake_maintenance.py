"""Table maintenance on real Delta tables: compact and vacuum, in the core, the CLI and REST."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from _services import run_aimesh
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from aimesh.config import Settings
from aimesh.errors import (
    Conflict,
    DatasetNotFound,
    DatasetVersionGone,
    InvalidName,
    InvalidRequest,
)
from aimesh.lake import Lake
from aimesh.lake.app import create_app

APPENDS = 4
"""Small appends per dataset: versions 0 to 3, one file each."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake.from_settings(settings)


@pytest.fixture
def client(settings: Settings, lake: Lake) -> Iterator[TestClient]:
    with TestClient(create_app(settings, lake=lake)) as c:
        yield c


def _append(lake: Lake, name: str = "tx", *, partition_by: list[str] | None = None) -> None:
    """``APPENDS`` small writes of 3 rows each, as a sink's micro-batches leave them."""
    for n in range(APPENDS):
        ids = [n * 3 + i for i in range(3)]
        batch = pa.table(
            {"id": ids, "label": ["ab"[i % 2] for i in ids], "amount": [i * 1.5 for i in ids]}
        )
        lake.write(name, batch, partition_by=partition_by)


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.sort_by("id").to_pylist()
    return rows


def _files(lake: Lake, name: str, version: int | None = None) -> set[str]:
    """The data files the Delta log lists for a version (default: the latest)."""
    table = DeltaTable(lake.tables.uri(name), version=version)
    return {uri.rsplit("/", 1)[-1] for uri in table.file_uris()}


def _on_disk(lake: Lake, name: str) -> set[str]:
    return {p.name for p in Path(lake.tables.uri(name)).rglob("*.parquet")}


# -- the core --------------------------------------------------------------------------------


def test_compact_rewrites_small_files_as_a_new_version_with_the_same_rows(lake: Lake) -> None:
    _append(lake)
    before = lake.read("tx")
    small = _files(lake, "tx")

    result = lake.compact("tx")

    assert (result.compacted, result.version, result.rows) == (True, APPENDS, 3 * APPENDS)
    assert (result.files_before, result.files_after) == (APPENDS, 1)
    assert (result.files_removed, result.files_added) == (APPENDS, 1)
    assert len(_files(lake, "tx")) == 1 and not _files(lake, "tx") & small
    after = lake.read("tx")
    assert _rows(after) == _rows(before) and after.schema == before.schema
    assert lake.history("tx", 1)[0].operation == "OPTIMIZE"
    # Time travel still reads the small files of the versions before.
    assert _files(lake, "tx", APPENDS - 1) == small
    assert _rows(lake.read("tx", APPENDS - 1)) == _rows(before)
    assert [r["id"] for r in _rows(lake.read("tx", 0))] == [0, 1, 2]


def test_compact_with_nothing_to_do_writes_no_version(lake: Lake) -> None:
    lake.write("one", pa.table({"id": [1, 2]}))
    _append(lake)
    lake.compact("tx")

    for name, version in [("one", 0), ("tx", APPENDS)]:
        result = lake.compact(name)
        assert (result.compacted, result.version, result.files_after) == (False, version, 1)
        assert lake.history(name, 1)[0].version == version
        assert result.files_before == result.files_after == len(_files(lake, name))


def test_vacuum_dry_run_lists_the_files_and_deletes_nothing(lake: Lake) -> None:
    _append(lake)
    small = _files(lake, "tx")
    lake.compact("tx")
    disk = _on_disk(lake, "tx")

    default = lake.vacuum("tx")  # a week's retention, as a dry run: nothing is that old
    listed = lake.vacuum("tx", 0, dry_run=True, force=True)

    assert (default.dry_run, default.retain_hours, default.files) == (True, 168, [])
    assert set(listed.files) == small and listed.dry_run
    assert listed.version == APPENDS == lake.history("tx", 1)[0].version
    assert _on_disk(lake, "tx") == disk
    assert _rows(lake.read("tx", 0)) == _rows(lake.read("tx"))[:3]


def test_vacuum_under_a_week_is_refused_without_force_and_deletes_nothing(lake: Lake) -> None:
    _append(lake)
    lake.compact("tx")
    disk = _on_disk(lake, "tx")

    for hours in (0, 167):
        with pytest.raises(InvalidRequest, match="time travel") as refused:
            lake.vacuum("tx", hours, dry_run=False)
        assert refused.value.code == "invalid_request"
        assert refused.value.details["minimum"] == 168
    # A dry run deletes nothing: it needs no force to say what 0 h would delete.
    listed = lake.vacuum("tx", 0, dry_run=True)
    assert listed.dry_run and len(listed.files) == APPENDS

    assert _on_disk(lake, "tx") == disk
    assert lake.history("tx", 1)[0].version == APPENDS
    assert len(lake.read("tx", 0)) == 3


def test_vacuum_with_force_deletes_old_files_and_old_versions_fail_clearly(lake: Lake) -> None:
    _append(lake)
    small = _files(lake, "tx")
    latest = lake.read("tx")
    compacted = lake.compact("tx").version

    result = lake.vacuum("tx", 0, dry_run=False, force=True)

    assert set(result.files) == small and not result.dry_run
    assert _on_disk(lake, "tx") == _files(lake, "tx") == _files(lake, "tx", compacted)
    assert result.version > compacted  # delta-rs records the vacuum as commits
    assert _rows(lake.read("tx")) == _rows(latest)
    assert _rows(lake.read("tx", compacted)) == _rows(latest)
    assert lake.query("select count(*) as n from tx").table.to_pylist() == [{"n": 12}]
    reads = [
        lambda: lake.read("tx", 1),
        lambda: list(lake.iter_batches("tx", 1)),
        lambda: lake.query("select * from tx", version=1),
        lambda: lake.query("select * from tx", versions={"tx": 1}),
        lambda: lake.export("select * from tx", Path(lake.location) / "out.csv", version=1),
    ]
    for read in reads:
        with pytest.raises(DatasetVersionGone) as gone:
            read()
        assert gone.value.code == "dataset_version_gone"
        assert (gone.value.name, gone.value.version) == ("tx", 1)
        assert gone.value.latest == result.version
        assert gone.value.missing.rsplit("/", 1)[-1] in small
    assert not (Path(lake.location) / "out.csv").exists()


def test_a_partitioned_dataset_compacts_per_partition_and_reports_gone_versions(
    lake: Lake,
) -> None:
    _append(lake, "parted", partition_by=["label"])
    before = lake.read("parted")

    result = lake.compact("parted")
    lake.vacuum("parted", 0, dry_run=False, force=True)

    assert (result.files_before, result.files_after) == (2 * APPENDS, 2)
    assert _rows(lake.read("parted")) == _rows(before)
    with pytest.raises(DatasetVersionGone, match="'parted' version 2"):
        lake.query("select count(*) from parted where label = 'a'", version=2)


def test_bad_input_is_refused_and_changes_nothing(lake: Lake) -> None:
    _append(lake)
    disk = _on_disk(lake, "tx")

    with pytest.raises(DatasetNotFound):
        lake.compact("nope")
    with pytest.raises(DatasetNotFound):
        lake.vacuum("nope", dry_run=False)
    with pytest.raises(InvalidName):
        lake.compact("Tx")
    for hours in (-1, 10**13):
        with pytest.raises(InvalidRequest, match="retain_hours must be from 0 to 876000"):
            lake.vacuum("tx", hours, dry_run=False, force=True)
    for size in (0, 10**14 * 1024**2):
        with pytest.raises(InvalidRequest, match="target_size must be from 1 byte"):
            lake.compact("tx", target_size=size)

    assert _on_disk(lake, "tx") == disk
    assert lake.history("tx", 1)[0].version == APPENDS - 1
    assert not (Path(lake.location) / "nope").exists()


def test_one_compaction_or_vacuum_of_a_dataset_at_a_time(lake: Lake, tmp_path: Path) -> None:
    _append(lake)
    with lake.tables.maintenance("tx"):  # another call of this process holds it
        with pytest.raises(Conflict, match="being compacted or vacuumed"):
            lake.compact("tx")
        with pytest.raises(Conflict):
            lake.vacuum("tx", dry_run=True)
        _append(lake, "other")
        assert lake.compact("other").compacted  # another dataset is not held up
    # Another process holds it (a CLI compaction beside the lake service's).
    lock = Path(lake.tables.uri("tx")) / "_aimesh_maintenance.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(lock)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Conflict):
            lake.compact("tx")
    finally:
        holder.kill()
        holder.wait()
    assert lake.history("tx", 1)[0].version == APPENDS - 1  # nothing was written meanwhile
    done = lake.compact("tx")  # free again
    assert done.compacted and done.rows == APPENDS * 3 and done.version == APPENDS
    assert _files(lake, "tx") != set() and "_aimesh_maintenance.lock" not in _files(lake, "tx")


# -- REST ------------------------------------------------------------------------------------


def test_rest_compacts_and_vacuums(client: TestClient, lake: Lake) -> None:
    _append(lake)
    small = _files(lake, "tx")
    base = "/api/lake/datasets/tx"

    compacted = client.post(f"{base}/compact", params={"target_size_mib": 64})
    again = client.post(f"{base}/compact")
    listed = client.post(f"{base}/vacuum", params={"retain_hours": 0, "force": True})
    refused = client.post(f"{base}/vacuum", params={"retain_hours": 0, "dry_run": False})
    disk = _on_disk(lake, "tx")
    vacuumed = client.post(
        f"{base}/vacuum", params={"retain_hours": 0, "dry_run": False, "force": True}
    )

    assert compacted.status_code == 200, compacted.text
    body = compacted.json()
    assert (body["compacted"], body["version"], body["files_before"], body["files_after"]) == (
        True,
        APPENDS,
        APPENDS,
        1,
    )
    assert (again.json()["compacted"], again.json()["version"]) == (False, APPENDS)
    assert listed.status_code == 200 and listed.json()["dry_run"] is True
    assert set(listed.json()["files"]) == small and small <= disk
    assert (refused.status_code, refused.json()["code"]) == (400, "invalid_request")
    assert "time travel" in refused.json()["error"]
    assert vacuumed.status_code == 200 and set(vacuumed.json()["files"]) == small
    assert _on_disk(lake, "tx") == _files(lake, "tx")
    old = client.post("/api/lake/query", json={"sql": "select * from tx", "version": 0})
    assert (old.status_code, old.json()["code"]) == (410, "dataset_version_gone")
    now = client.post("/api/lake/query", json={"sql": "select count(*) from tx"})
    assert now.json()["rows"] == [[3 * APPENDS]]


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("nope/compact", {}, 404, "dataset_not_found"),
        ("nope/vacuum", {"dry_run": False}, 404, "dataset_not_found"),
        ("Tx/vacuum", {}, 400, "invalid_name"),
        ("tx/compact", {"target_size_mib": "big"}, 400, "invalid_request"),
        ("tx/compact", {"target_size_mib": 0}, 400, "invalid_request"),
        ("tx/compact", {"target_size_mib": 10**14}, 400, "invalid_request"),
        ("tx/vacuum", {"retain_hours": 3 * 10**12, "force": True}, 400, "invalid_request"),
        (
            "tx/vacuum",
            {"retain_hours": -1, "force": True, "dry_run": False},
            400,
            "invalid_request",
        ),
        ("tx/vacuum", {"retain_hours": "x"}, 400, "invalid_request"),
        ("tx/vacuum", {"retain_hours": 24, "dry_run": False}, 400, "invalid_request"),
    ],
)
def test_rest_bad_input_gets_clear_errors_and_changes_nothing(
    client: TestClient, lake: Lake, path: str, params: dict[str, Any], status: int, code: str
) -> None:
    _append(lake)
    disk = _on_disk(lake, "tx")

    got = client.post(f"/api/lake/datasets/{path}", params=params)

    assert (got.status_code, got.json()["code"]) == (status, code), got.text
    assert _on_disk(lake, "tx") == disk
    assert lake.history("tx", 1)[0].version == APPENDS - 1


def test_rest_routes_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    compact = paths["/api/lake/datasets/{name}/compact"]["post"]
    vacuum = paths["/api/lake/datasets/{name}/vacuum"]["post"]
    assert compact["summary"].startswith("Compact a dataset")
    assert vacuum["summary"].startswith("Vacuum a dataset")
    assert {p["name"] for p in vacuum["parameters"]} >= {"retain_hours", "dry_run", "force"}
    assert "target_size_mib" in {p["name"] for p in compact["parameters"]}


# -- the CLI ---------------------------------------------------------------------------------


def _aimesh(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    return run_aimesh({**env, "AIMESH_HOME": str(home)}, "lake", *args, ok=ok)


def test_cli_compacts_and_vacuums(settings: Settings, lake: Lake) -> None:
    _append(lake)
    small = _files(lake, "tx")
    latest = _rows(lake.read("tx"))

    assert "--target-size" in _aimesh(settings.home, "compact", "--help").stdout
    helped = _aimesh(settings.home, "vacuum", "--help").stdout
    assert "--retain-hours" in helped and "--dry-run" in helped and "--force" in helped
    compacted = _aimesh(settings.home, "compact", "tx").stdout
    assert f"tx@{APPENDS}  compacted: {APPENDS} -> 1 file(s)" in compacted
    listed = _aimesh(settings.home, "vacuum", "tx", "--retain-hours", "0", "--force", "--dry-run")
    assert f"would delete {APPENDS} file(s)" in listed.stdout
    assert all(name in listed.stdout for name in small) and small <= _on_disk(lake, "tx")
    refused = _aimesh(settings.home, "vacuum", "tx", "--retain-hours", "0", ok=False)
    assert refused.returncode == 1 and "(invalid_request)" in refused.stderr
    assert "time travel" in refused.stderr and small <= _on_disk(lake, "tx")
    vacuumed = _aimesh(settings.home, "vacuum", "tx", "--retain-hours", "0", "--force")
    assert f"deleted {APPENDS} file(s)" in vacuumed.stdout
    assert _on_disk(lake, "tx") == _files(lake, "tx") and _rows(lake.read("tx")) == latest
    gone = _aimesh(settings.home, "query", "select * from tx", "--version", "1", ok=False)
    assert gone.returncode == 1 and "(dataset_version_gone)" in gone.stderr
    assert "Traceback" not in gone.stderr
    bad = _aimesh(settings.home, "compact", "tx", "--target-size", "big", ok=False)
    assert bad.returncode == 2 and "--target-size" in bad.stderr and "Traceback" not in bad.stderr

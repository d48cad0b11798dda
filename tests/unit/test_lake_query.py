"""SQL over the lake: results, limits, versions, and everything that must be refused."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aimesh.errors import (
    DatasetNotFound,
    DatasetVersionNotFound,
    InvalidRequest,
    QueryError,
    QueryRefused,
    QueryTimeout,
)
from aimesh.lake import Lake
from aimesh.lake.delta import DeltaTables


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """Dataset ``tx`` at versions 0, 1, 2 (10, 20, 30 rows) and ``labels`` at version 0."""
    lake = Lake(DeltaTables(str(tmp_path / "lake")), query_timeout_s=5)
    for v in range(3):
        rows = [{"id": v * 10 + i, "label": "fraud" if i < 2 else "ok"} for i in range(10)]
        lake.write("tx", pa.Table.from_pylist(rows))
    lake.write("labels", pa.table({"label": ["fraud", "ok"], "bad": [True, False]}))
    return lake


def test_a_query_sees_every_dataset_as_a_table_at_its_latest_version(lake: Lake) -> None:
    result = lake.query(
        "select l.bad, count(*) as n from tx join labels l using (label) group by 1 order by 1"
    )

    assert result.table.to_pylist() == [{"bad": False, "n": 24}, {"bad": True, "n": 6}]
    assert result.versions == {"labels": 0, "tx": 2}
    assert not result.truncated


def test_time_travel_reads_an_older_version(lake: Lake) -> None:
    at_1 = lake.query("select count(*) as n from tx", version=1)
    per_dataset = lake.query(
        "select count(*) as n from tx join labels using (label)", versions={"tx": 0}
    )

    assert at_1.table.to_pylist() == [{"n": 20}]
    assert at_1.versions == {"tx": 1}
    assert per_dataset.table.to_pylist() == [{"n": 10}]
    with pytest.raises(InvalidRequest, match="applies to a query that reads one dataset"):
        lake.query("select * from tx join labels using (label)", version=0)
    with pytest.raises(InvalidRequest, match="does not read"):
        lake.query("select * from tx", versions={"labels": 0})
    with pytest.raises(DatasetVersionNotFound):
        lake.query("select * from tx", version=9)


def test_the_limit_cuts_rows_and_says_so(lake: Lake) -> None:
    cut = lake.query("select * from tx order by id", limit=5)
    exact = lake.query("select * from tx order by id", limit=30)

    assert cut.truncated
    assert cut.table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert not exact.truncated
    assert exact.table.num_rows == 30
    # A trailing semicolon or comment does not break the limit around the query.
    assert lake.query("select 1 as x; -- done", limit=1).table.to_pylist() == [{"x": 1}]
    assert lake.query("values (1), (2) -- two", limit=1).truncated


@pytest.mark.parametrize(
    "sql",
    [
        "drop table tx",
        "DELETE FROM tx",
        "insert into tx values (1, 'x')",
        "create table t as select 1",
        "copy tx to '/tmp/aimesh-leak.csv'",
        "copy (select * from tx) to '/tmp/aimesh-leak.parquet' (format parquet)",
        "attach '/tmp/aimesh-other.db' as other",
        "install httpfs",
        "load httpfs",
        "set enable_external_access = true",
        "pragma database_list",
        "call duckdb_settings()",
        "select 1; drop table tx",
        "select * from tx; select * from tx",
        "export database '/tmp/aimesh-leak'",
    ],
)
def test_anything_but_one_read_only_statement_is_refused(lake: Lake, sql: str) -> None:
    with pytest.raises(QueryRefused):
        lake.query(sql)
    assert lake.query("select count(*) as n from tx").table.to_pylist() == [{"n": 30}]


@pytest.mark.parametrize(
    "sql",
    [
        "select * from read_csv('/etc/passwd')",
        "select * from read_parquet('/tmp/*.parquet')",
        "select * from glob('/*')",
        "with x as (select * from read_text('/etc/hostname')) select * from x",
    ],
)
def test_a_select_that_reaches_outside_the_lake_is_refused_by_duckdb(lake: Lake, sql: str) -> None:
    with pytest.raises(QueryRefused, match="file system operations are disabled"):
        lake.query(sql)


def test_export_writes_no_file_outside_the_lake(lake: Lake, tmp_path: Path) -> None:
    leak = tmp_path / "leak.csv"
    with pytest.raises(QueryRefused):
        lake.query(f"copy tx to '{leak}'")
    assert not leak.exists()


def test_python_variables_are_not_tables(lake: Lake) -> None:
    secret = pa.table({"password": ["hunter2"]})  # DuckDB would find this by name otherwise
    assert secret.num_rows == 1
    with pytest.raises(DatasetNotFound, match="secret"):
        lake.query("select * from secret")


def test_bad_sql_is_a_query_error_with_duckdbs_message(lake: Lake) -> None:
    with pytest.raises(QueryError, match="syntax error"):
        lake.query("selec * from tx")
    with pytest.raises(QueryError, match='column "nope" not found'):
        lake.query("select nope from tx")
    with pytest.raises(QueryError, match="empty"):
        lake.query("  ")
    with pytest.raises(DatasetNotFound, match="no dataset named 'missing'"):
        lake.query("select * from missing")


def test_a_query_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    lake = Lake(DeltaTables(str(tmp_path / "lake")), query_timeout_s=0.3)
    with pytest.raises(QueryTimeout, match=r"stopped after 0\.3s"):
        lake.query("select count(*) from range(100000000000) a, range(10) b")


def test_export_streams_the_whole_result_to_parquet_or_csv(lake: Lake, tmp_path: Path) -> None:
    rows = lake.export("select * from tx order by id", tmp_path / "all.parquet")
    some = lake.export("select * from tx", tmp_path / "some.csv", version=0, limit=3)

    assert rows == 30
    assert pq.read_table(tmp_path / "all.parquet").num_rows == 30
    assert some == 3
    assert (tmp_path / "some.csv").read_text().count("\n") == 4
    with pytest.raises(InvalidRequest, match=r"\.parquet or \.csv"):
        lake.export("select 1", tmp_path / "out.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "all.parquet",
        "some.csv",
    ]


def test_a_query_spills_only_into_a_folder_of_its_own_removed_after(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    lake = Lake(DeltaTables(str(tmp_path / "lake")), query_temp_dir=spill)

    result = lake.query(
        "select current_setting('temp_directory') as temp, "
        "current_setting('home_directory') as home, current_setting('memory_limit') as mem"
    )

    row = result.table.to_pylist()[0]
    assert Path(row["temp"]).parent == spill
    assert row["home"] == row["temp"]
    assert row["mem"].startswith("953")  # 1GB, as DuckDB prints it (MiB)
    assert list(spill.iterdir()) == []

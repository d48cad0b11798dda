"""Ingest into the lake: every format, appends, schema checks, evolution, time travel."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from aimesh.errors import (
    DatasetNotFound,
    DatasetVersionNotFound,
    InvalidData,
    InvalidName,
    InvalidRequest,
    SchemaMismatch,
)
from aimesh.lake import DatasetRef, Lake
from aimesh.lake.delta import DeltaTables

ROWS = [
    {"id": i, "label": "fraud" if i % 10 == 0 else "ok", "amount": i * 1.5} for i in range(5000)
]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """A lake in a temp folder, with small chunks so that every ingest streams many."""
    return Lake(DeltaTables(str(tmp_path / "lake")), chunk_rows=1024, chunk_bytes=64 * 1024)


def _table(rows: list[dict[str, object]] = ROWS) -> pa.Table:
    return pa.Table.from_pylist(rows)


def _write(path: Path, rows: list[dict[str, object]] = ROWS) -> Path:
    """``rows`` written in the format ``path``'s extension names."""
    suffix = path.suffix if path.suffix != ".gz" else Path(path.stem).suffix
    if suffix == ".csv":
        pacsv.write_csv(_table(rows), path)
    elif suffix == ".parquet":
        pq.write_table(_table(rows), path, row_group_size=700)
    elif suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if path.suffix == ".gz":
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    return path


@pytest.mark.parametrize("name", ["tx.csv", "tx.parquet", "tx.json", "tx.jsonl", "tx.jsonl.gz"])
def test_ingest_each_format_creates_version_0_with_every_row(
    lake: Lake, tmp_path: Path, name: str
) -> None:
    result = lake.ingest("tx", [_write(tmp_path / name)])

    assert (result.version, result.rows, result.created) == (0, 5000, True)
    table = lake.read("tx")
    assert table.num_rows == 5000
    assert table.sort_by("id").to_pylist()[:2] == ROWS[:2]
    assert lake.describe("tx").rows == 5000


def test_ingest_a_json_file_of_one_object_per_line(lake: Lake, tmp_path: Path) -> None:
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:10]))

    assert lake.ingest("tx", [path]).rows == 10


def test_ingest_a_folder_and_a_glob_make_one_version(lake: Lake, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        _write(folder / f"part-{i}.parquet", ROWS[i * 100 : (i + 1) * 100])
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.parquet").write_text("not parquet")

    assert lake.ingest("from_dir", [folder]).rows == 300
    result = lake.ingest("from_glob", [str(folder / "part-[01].parquet")])
    assert (result.version, result.rows, result.sources) == (0, 200, 2)


def test_every_ingest_is_one_new_version_and_time_travel_reads_old_ones(
    lake: Lake, tmp_path: Path
) -> None:
    for i in range(3):
        path = _write(tmp_path / f"batch{i}.csv", ROWS[i * 10 : (i + 1) * 10])
        assert lake.ingest("tx", [path]).version == i

    assert lake.read("tx", 1).num_rows == 20
    assert lake.read("tx").num_rows == 30
    assert lake.pin("tx") == DatasetRef("tx", 2)
    assert lake.pin("tx@1") == DatasetRef("tx", 1)
    assert [b.num_rows for b in lake.iter_batches("tx", 0, batch_rows=4)] == [4, 4, 2]
    info = lake.describe("tx", 1)
    assert (info.version, info.latest_version, info.rows) == (1, 2, 20)
    assert [v.version for v in info.versions] == [2, 1, 0]
    assert [v.rows_added for v in info.versions] == [10, 10, 10]
    assert info.versions[0].metadata["aimesh.source"] == "batch2.csv"
    assert [v.version for v in lake.describe("tx", 0, history_limit=1).versions] == [2]
    assert [v.version for v in lake.history("tx", limit=2)] == [2, 1]


def test_a_big_file_streams_in_chunks_into_one_version(lake: Lake, tmp_path: Path) -> None:
    path = _write(tmp_path / "big.csv")  # ~90 KiB, read 64 KiB at a time
    seen: list[tuple[int, int]] = []

    result = lake.ingest("tx", [path], on_progress=lambda done, total: seen.append((done, total)))

    assert result.version == 0
    assert len(seen) >= 2
    assert seen[-1][0] == seen[-1][1] == path.stat().st_size
    files = list((tmp_path / "lake" / "tx").glob("*.parquet"))
    row_groups = sum(pq.ParquetFile(f).num_row_groups for f in files)
    assert row_groups >= 5000 // 1024  # written a chunk (row group) at a time


def test_an_append_that_does_not_fit_the_schema_changes_nothing(lake: Lake, tmp_path: Path) -> None:
    lake.ingest("tx", [_write(tmp_path / "a.csv", ROWS[:10])])
    lake.ingest("tx", [_write(tmp_path / "b.csv", ROWS[10:20])])
    wrong_type = tmp_path / "wrong_type.csv"
    wrong_type.write_text("id,label,amount\n1,ok,lots\n")
    extra = _write(tmp_path / "extra.parquet", [{**r, "country": "FR"} for r in ROWS[:5]])
    missing = _write(tmp_path / "missing.jsonl", [{"id": 1, "label": "ok"}])
    strings = _write(tmp_path / "strings.parquet", [{**r, "id": str(r["id"])} for r in ROWS[:5]])

    for bad, said in [
        (wrong_type, "wrong_type.csv"),
        (extra, "new columns 'country'"),
        (strings, "column 'id' is int64 in the dataset but string in the data"),
    ]:
        with pytest.raises(SchemaMismatch, match="nothing was written") as caught:
            lake.ingest("tx", [bad])
        assert said in caught.value.message

    # JSON has no "missing column": an absent key is a null.
    assert lake.ingest("tx", [missing]).version == 2
    assert lake.describe("tx").version == 2
    assert lake.read("tx").num_rows == 21


def test_a_late_bad_value_fails_the_whole_ingest_and_writes_nothing(
    lake: Lake, tmp_path: Path
) -> None:
    lake.ingest("tx", [_write(tmp_path / "a.csv", ROWS[:10])])
    path = tmp_path / "late.csv"
    lines = ["id,label,amount"] + [f"{i},ok,{i}.5" for i in range(20_000)] + ["7,ok,oops"]
    path.write_text("\n".join(lines) + "\n")  # the bad value is blocks after the first

    with pytest.raises(SchemaMismatch, match="oops"):
        lake.ingest("tx", [path])

    assert lake.describe("tx").version == 0
    assert lake.read("tx").num_rows == 10


def test_evolve_adds_new_columns_and_fills_missing_ones_with_nulls(
    lake: Lake, tmp_path: Path
) -> None:
    lake.ingest("tx", [_write(tmp_path / "a.parquet", ROWS[:3])])
    wider = _write(tmp_path / "b.parquet", [{"id": 9, "country": "FR"}])

    result = lake.ingest("tx", [wider], evolve=True)

    assert result.new_columns == ["country"]
    assert lake.schema("tx").names == ["id", "label", "amount", "country"]
    assert lake.schema("tx", 0).names == ["id", "label", "amount"]
    last = lake.query("select * from tx where id = 9").table.to_pylist()
    assert last == [{"id": 9, "label": None, "amount": None, "country": "FR"}]


def test_compatible_types_are_widened_on_append(lake: Lake, tmp_path: Path) -> None:
    lake.ingest("tx", [_write(tmp_path / "a.parquet", ROWS[:3])])
    narrow = pa.table(
        {
            "id": pa.array([7], pa.int32()),
            "label": pa.array(["ok"], pa.large_string()),
            "amount": pa.array([2], pa.int16()),
        }
    )
    pq.write_table(narrow, tmp_path / "narrow.parquet")

    lake.ingest("tx", [tmp_path / "narrow.parquet"])

    assert lake.schema("tx") == lake.schema("tx", 0)
    assert lake.read("tx").num_rows == 4


def test_partitioned_dataset_keeps_its_partitions(lake: Lake, tmp_path: Path) -> None:
    result = lake.ingest("tx", [_write(tmp_path / "a.csv", ROWS[:100])], partition_by=["label"])
    lake.ingest("tx", [_write(tmp_path / "b.csv", ROWS[100:200])])

    assert result.version == 0
    folders = sorted(p.name for p in (tmp_path / "lake" / "tx").iterdir() if p.is_dir())
    assert folders == ["_delta_log", "label=fraud", "label=ok"]
    assert lake.describe("tx").partition_by == ["label"]
    counts = lake.query("select label, count(*) n from tx group by 1 order by 1").table
    assert counts.to_pylist() == [{"label": "fraud", "n": 20}, {"label": "ok", "n": 180}]
    with pytest.raises(InvalidRequest, match="partitioned by"):
        lake.ingest("tx", [tmp_path / "a.csv"], partition_by=["id"])
    with pytest.raises(InvalidRequest, match="no such column"):
        lake.ingest("other", [tmp_path / "a.csv"], partition_by=["nope"])


def test_write_arrow_records_an_application_transaction(lake: Lake) -> None:
    assert lake.transaction_version("tx", "app") is None

    first = lake.write("tx", _table(ROWS[:5]), app_transaction=("app", 41))
    lake.write("tx", _table(ROWS[5:7]), metadata={"note": "hello"})

    assert (first.version, first.rows, first.created) == (0, 5, True)
    assert lake.transaction_version("tx", "app") == 41
    assert lake.history("tx")[0].metadata == {"aimesh.note": "hello"}


def test_unknown_datasets_versions_and_names_are_clear_errors(lake: Lake, tmp_path: Path) -> None:
    lake.ingest("tx", [_write(tmp_path / "a.csv", ROWS[:3])])

    with pytest.raises(DatasetNotFound, match="no dataset named 'nope'"):
        lake.describe("nope")
    with pytest.raises(DatasetVersionNotFound, match="no version 5 \\(the latest is 0\\)"):
        lake.read("tx", 5)
    with pytest.raises(DatasetVersionNotFound):
        list(lake.iter_batches("tx", 3))
    with pytest.raises(InvalidName):
        lake.ingest("Robert'); DROP TABLE", [tmp_path / "a.csv"])
    with pytest.raises(InvalidRequest, match="invalid dataset reference"):
        DatasetRef.parse("tx@-1")
    with pytest.raises(InvalidRequest, match="version must be 0 or more"):
        lake.read("tx", -1)


def test_bad_sources_are_clear_errors_and_create_nothing(lake: Lake, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.json").write_text('[{"id": 1}, {"id": ')
    (tmp_path / "scalars.json").write_text("[1, 2]")
    (tmp_path / "fake.parquet").write_text("not parquet")
    (tmp_path / "mixed.csv").write_text("a\n1\n")
    (tmp_path / "mixed.jsonl").write_text('{"a": 1}\n')

    cases: list[tuple[list[str | Path], type[Exception], str]] = [
        ([tmp_path / "none.csv"], InvalidRequest, "no such file"),
        ([str(tmp_path / "*.xyz")], InvalidRequest, "no files match"),
        ([tmp_path / "notes.txt"], InvalidRequest, "cannot tell the format"),
        ([tmp_path / "mixed.csv", tmp_path / "mixed.jsonl"], InvalidRequest, "mix formats"),
        ([tmp_path / "broken.json"], InvalidData, "broken.json"),
        ([tmp_path / "scalars.json"], InvalidData, "must be a JSON object"),
        ([tmp_path / "fake.parquet"], InvalidData, "fake.parquet"),
    ]
    for sources, error, said in cases:
        with pytest.raises(error, match=said):
            lake.ingest("tx", sources)
    assert lake.list_datasets() == []

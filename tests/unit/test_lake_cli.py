"""``aimesh lake`` commands in-process: what they print and how they fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import aimesh.cli
from aimesh.cli import app


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    """The command groups, registered once (``main()`` does it before running)."""
    if not any(group.name == "lake" for group in app.registered_groups):
        aimesh.cli._register()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in [k for k in os.environ if k.startswith("AIMESH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AIMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def _ok(run: CliRunner, *args: str) -> str:
    result = run.invoke(app, ["lake", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_query_show_and_list_print_tables(run: CliRunner, tmp_path: Path) -> None:
    csv = tmp_path / "tx.csv"
    csv.write_text("id,label,ts\n1,a,2024-01-01 00:00:00\n2,b,2024-01-02 00:00:00\n3,a,\n")
    _ok(run, "ingest", "tx", str(csv))
    _ok(run, "ingest", "tx", str(csv))

    counted = _ok(run, "query", "select label, count(*) as n from tx group by 1 order by 1")
    assert "│ a     │ 4 │" in counted and "│ b     │ 2 │" in counted
    assert "tx@1" in counted
    assert "│ 3 │" in _ok(run, "query", "select count(*) as n from tx", "--at", "tx=0")
    _ok(run, "ingest", "transactions", str(csv))
    narrow = _ok(run, "query", "select count(*) as n from transactions")
    assert "transactions@0" in narrow  # a narrow answer does not wrap the title it was read at
    assert "│ 1 " in _ok(run, "query", "select 1 as one")  # no dataset read: no title
    shown = _ok(run, "show", "tx")
    assert "timestamp[us]" in shown  # not eaten as markup
    assert "tx@1  6 rows" in shown
    listed = _ok(run, "list", "--json")
    assert '"name": "tx"' in listed and '"rows": 6' in listed
    assert '"rows": [' in _ok(run, "query", "select * from tx", "--json")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["query", "copy tx to '/tmp/x.csv'"], "(query_refused)"),
        (["query", "select nope from tx"], "(invalid_query)"),
        (["query", "select * from tx", "--at", "tx"], "must look like NAME=VERSION"),
        (["query", "select * from tx", "--output", "out.xlsx"], ".parquet or .csv"),
        (["show", "nope"], "no dataset named 'nope' (dataset_not_found)"),
        (["show", "tx@9"], "(dataset_version_not_found)"),
        (["show", "tx@x"], "invalid dataset reference"),
        (["ingest", "tx"], "give the files to ingest"),
        (["ingest", "tx", "missing.csv"], "no such file or folder: missing.csv"),
        (["ingest", "tx", "a.csv", "--from-subject", "tx.raw"], "not both"),
        (["ingest", "Tx", "a.csv"], "(invalid_name)"),
        (["ingest", "tx", "a.csv", "--format", "xml"], "unknown format 'xml'"),
    ],
)
def test_bad_input_is_one_red_line_and_exit_code_1(
    run: CliRunner, tmp_path: Path, args: list[str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.csv").write_text("id\n1\n")
    _ok(run, "ingest", "tx", "a.csv")

    result = run.invoke(app, ["lake", *args])

    assert result.exit_code == 1, result.output
    assert said in result.output
    assert "Traceback" not in result.output


def test_every_command_has_help(run: CliRunner) -> None:
    for command in ["ingest", "list", "show", "query", "serve"]:
        assert "Usage" in _ok(run, command, "--help")

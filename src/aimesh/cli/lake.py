"""``aimesh lake``: ingest files or a bus subject, list, show, query, compact, vacuum, serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from aimesh.cli._app import (
    Insecure,
    console,
    err_console,
    handle_errors,
    serve_service_app,
    settings,
)
from aimesh.config import Settings
from aimesh.errors import InvalidRequest

app = typer.Typer(
    help="The data lake: versioned datasets (Delta Lake), ingest, SQL.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
@handle_errors
def ingest(
    name: Annotated[str, typer.Argument(help="Dataset name (created on its first ingest).")],
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Files, folders or globs: .csv .tsv .parquet .json .jsonl (.gz)."),
    ] = None,
    from_subject: Annotated[
        str | None,
        typer.Option(
            "--from-subject",
            help="Consume this bus subject into the dataset until Ctrl-C, instead of files.",
        ),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option("--format", help="csv, parquet, json or jsonl (default: by extension)."),
    ] = None,
    evolve: Annotated[
        bool, typer.Option("--evolve", help="Add columns the dataset lacks (missing ones: nulls).")
    ] = False,
    partition_by: Annotated[
        list[str] | None,
        typer.Option("--partition-by", help="Partition column (repeatable; first ingest only)."),
    ] = None,
    chunk_rows: Annotated[
        int | None,
        typer.Option(min=1024, help="Rows per chunk and row group (default: lake.chunk_rows)."),
    ] = None,
    batch_rows: Annotated[
        int | None,
        typer.Option(min=1, help="With --from-subject: rows per commit (lake.sink_batch_rows)."),
    ] = None,
    batch_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.01, help="With --from-subject: seconds per commit (lake.sink_batch_seconds)."
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Append files to dataset NAME as one new version, or sink a bus subject into it."""
    from aimesh.lake import open_lake

    config = settings()
    if from_subject is not None:
        if sources:
            raise InvalidRequest("give source files or --from-subject, not both")
        _run_sink(config, name, from_subject, batch_rows, batch_seconds, evolve)
        return
    if not sources:
        raise InvalidRequest("give the files to ingest (or --from-subject SUBJECT)")
    lake = open_lake(config)
    with _progress() as progress:
        task = progress.add_task(f"ingest {name}", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = lake.ingest(
            name,
            sources,
            format=format,
            evolve=evolve,
            partition_by=partition_by,
            chunk_rows=chunk_rows,
            on_progress=report,
        )
    if json_out:
        console.print_json(result.model_dump_json())
        return
    what = "new dataset" if result.created else "appended"
    added = f"; new columns: {', '.join(result.new_columns)}" if result.new_columns else ""
    rate = result.rows / result.seconds if result.seconds > 0 else 0.0
    console.print(
        f"[bold]{result.dataset}@{result.version}[/bold]  {what}: {result.rows:,} rows from "
        f"{result.sources} file(s), {_size(result.bytes_read)} in {result.seconds:.1f}s "
        f"({rate:,.0f} rows/s){added}"
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def _run_sink(
    config: Settings,
    name: str,
    subject: str,
    batch_rows: int | None,
    batch_seconds: float | None,
    evolve: bool,
) -> None:
    from aimesh.observability import configure_logging

    configure_logging(config.log_level, config.log_format)
    asyncio.run(_sink(config, name, subject, batch_rows, batch_seconds, evolve))


async def _sink(
    config: Settings,
    name: str,
    subject: str,
    batch_rows: int | None,
    batch_seconds: float | None,
    evolve: bool,
) -> None:
    from aimesh.bus import open_bus
    from aimesh.lake import LakeSink, SinkCommit, open_lake, sink_names
    from aimesh.observability import stop_on_signals

    names = sink_names(name, subject)
    lake = open_lake(config)
    stop = asyncio.Event()

    def on_signal() -> None:
        err_console.print("stopping: committing the batch in hand (Ctrl-C again to quit now)")
        stop.set()

    # the batch in hand is one commit; a second Ctrl-C quits without it
    stop_on_signals(on_signal, what=f"the sink into {name}", grace_s=120)

    totals = {"commits": 0, "rows": 0, "dead": 0}

    def on_commit(commit: SinkCommit) -> None:
        totals["commits"] += commit.version >= 0
        totals["rows"] += commit.rows
        totals["dead"] += commit.dead_letters
        dead = f", {commit.dead_letters} dead-lettered" if commit.dead_letters else ""
        where = f"{name}@{commit.version}" if commit.version >= 0 else "no rows"
        console.print(
            f"{where}: +{commit.rows:,} rows from {commit.messages:,} messages "
            f"(stream sequence <= {commit.last_seq}){dead}",
            highlight=False,
        )

    def on_start() -> None:
        console.print(
            f"sinking {escape(subject)} into dataset {name} (consumer {names.durable}, "
            f"dead letters on {names.dead_letters}); Ctrl-C to stop",
            highlight=False,
        )

    async with await open_bus(config, name=f"lake-sink-{name}") as bus:
        sink = LakeSink(
            lake,
            bus,
            name,
            subject,
            batch_rows=batch_rows or config.lake.sink_batch_rows,
            batch_seconds=batch_seconds or config.lake.sink_batch_seconds,
            ack_wait_s=config.lake.sink_ack_wait_s,
            max_age_s=config.lake.sink_max_age_s,
            max_bytes=config.lake.sink_max_bytes,
            evolve=evolve,
            on_commit=on_commit,
            on_start=on_start,
        )
        await sink.run(stop)
    console.print(
        f"sink stopped: +{totals['rows']:,} rows in {totals['commits']:,} version(s), "
        f"{totals['dead']:,} message(s) dead-lettered",
        highlight=False,
    )


@app.command("list")
@handle_errors
def list_datasets(json_out: JsonFlag = False) -> None:
    """List every dataset: latest version, rows, size, last change."""
    from aimesh.lake import open_lake

    datasets = open_lake(settings()).list_datasets()
    if json_out:
        console.print_json(json.dumps([d.model_dump(mode="json") for d in datasets]))
        return
    table = Table("dataset", "version", "rows", "size", "files", "updated", title="datasets")
    for d in datasets:
        table.add_row(
            d.name,
            str(d.version),
            f"{d.rows:,}",
            _size(d.size_bytes),
            str(d.files),
            d.updated.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


@app.command()
@handle_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME, or NAME@VERSION.")],
    version: Annotated[
        int | None, typer.Option("--version", "-v", min=0, help="The version to show.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a dataset: its schema, size and every version (time travel with --version)."""
    from aimesh.lake import DatasetRef, open_lake

    parsed = DatasetRef.parse(ref)
    info = open_lake(settings()).describe(
        parsed.name, version if version is not None else parsed.version
    )
    if json_out:
        console.print_json(info.model_dump_json())
        return
    at = "" if info.version == info.latest_version else f" (latest: {info.latest_version})"
    console.print(
        f"[bold]{info.name}@{info.version}[/bold]{at}  {info.rows:,} rows, "
        f"{_size(info.size_bytes)} in {info.files} file(s)  {escape(info.location)}",
        highlight=False,
    )
    if info.partition_by:
        console.print("partitioned by " + ", ".join(info.partition_by))
    schema = Table("column", "type", "nullable", title="schema")
    for c in info.columns:
        schema.add_row(escape(c.name), escape(c.type), "yes" if c.nullable else "no")
    console.print(schema)
    history = Table("version", "when", "operation", "rows added", "source", title="versions")
    for v in info.versions:
        source = v.metadata.get("aimesh.source") or v.metadata.get("aimesh.sink.subject", "")
        history.add_row(
            str(v.version),
            v.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            v.operation + (f" ({v.mode})" if v.mode else ""),
            "" if v.rows_added is None else f"{v.rows_added:,}",
            escape(source),
        )
    console.print(history)


@app.command()
@handle_errors
def query(
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement; datasets are tables.")],
    version: Annotated[
        int | None,
        typer.Option("--version", "-v", min=0, help="Read the one dataset named at this version."),
    ] = None,
    at: Annotated[
        list[str] | None,
        typer.Option("--at", help="NAME=VERSION: read that dataset at that version (repeatable)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Most rows (default: lake.query_rows; none with --output)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the whole result to a .parquet or .csv file."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run SQL over the datasets (DuckDB), e.g. "select label, count(*) from tx group by 1"."""
    from aimesh.lake import open_lake

    lake = open_lake(settings())
    versions = _versions(at or [])
    if output is not None:
        rows = lake.export(sql, output, version=version, versions=versions, limit=limit)
        console.print(f"wrote {rows:,} rows to {escape(str(output))}", highlight=False)
        return
    result = lake.query(sql, version=version, versions=versions, limit=limit)
    if json_out:
        from aimesh.lake.api import answer

        console.print_json(json.dumps(answer(result), default=str))
        return
    title = _read_at(result.versions)
    # min_width: a narrow answer (one count) must not wrap the title it is read at.
    table = Table(*result.table.column_names, title=title, min_width=len(title or ""))
    for row in zip(*(c.to_pylist() for c in result.table.columns), strict=True):
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    shown = f"{result.table.num_rows:,} row(s) in {result.elapsed_s * 1000:.0f} ms"
    if result.truncated:
        shown += (
            f"; more rows exist beyond the limit of {result.table.num_rows:,} "
            "(--limit N, or --output FILE for all)"
        )
    err_console.print(shown, highlight=False)


@app.command()
@handle_errors
def compact(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    target_size: Annotated[
        int | None,
        typer.Option(
            "--target-size",
            min=1,
            max=1024**2,
            metavar="MiB",
            help="Size files grow to, in MiB (default: the table's delta.targetFileSize, 100).",
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Rewrite dataset NAME's small files into larger ones, as one new version.

    Rows and schema stay the same; older versions still read their own files until a vacuum.
    """
    from aimesh.lake import open_lake

    lake = open_lake(settings())
    with _working(f"compacting {name}"):
        result = lake.compact(name, None if target_size is None else target_size * 1024**2)
    if json_out:
        console.print_json(result.model_dump_json())
        return
    if not result.compacted:
        console.print(
            f"[bold]{name}@{result.version}[/bold]  nothing to compact ({result.files_before} "
            "file(s), none to merge); no version written",
            highlight=False,
        )
        return
    console.print(
        f"[bold]{name}@{result.version}[/bold]  compacted: {result.files_before} -> "
        f"{result.files_after} file(s) ({result.files_removed} rewritten into "
        f"{result.files_added}), {result.rows:,} rows, in {result.seconds:.1f}s",
        highlight=False,
    )


@app.command()
@handle_errors
def vacuum(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    retain_hours: Annotated[
        int,
        typer.Option(
            "--retain-hours",
            min=0,
            max=876_000,
            help="Keep the files that the versions of the last H hours read.",
            metavar="H",
        ),
    ] = 168,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files it would delete; delete nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Allow under 168 hours (older versions can no longer be read)."
        ),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Delete the data files that only versions older than the retention read (now, unless
    --dry-run; the REST route is a dry run unless asked otherwise).

    Time travel to those versions (and a reader still on one) fails afterwards.
    """
    from aimesh.lake import open_lake

    lake = open_lake(settings())
    with _working(f"vacuuming {name}"):
        result = lake.vacuum(name, retain_hours, dry_run=dry_run, force=force)
    if json_out:
        console.print_json(result.model_dump_json())
        return
    kept = f"older than the last {result.retain_hours} h"
    if not result.files:
        console.print(
            f"[bold]{name}@{result.version}[/bold]  nothing to delete: no file is read only by "
            f"versions {kept}",
            highlight=False,
        )
        return
    did = "would delete" if result.dry_run else "deleted"
    console.print(
        f"[bold]{name}@{result.version}[/bold]  {did} {len(result.files):,} file(s) read only by "
        f"versions {kept}, in {result.seconds:.1f}s"
        + ("; nothing was deleted (dry run)" if result.dry_run else ""),
        highlight=False,
    )
    files = Table("file", title="files")
    for path in result.files[:_FILES_SHOWN]:
        files.add_row(escape(path))
    if len(result.files) > _FILES_SHOWN:
        files.add_row(
            f"[dim]... and {len(result.files) - _FILES_SHOWN:,} more (--json for all)[/dim]"
        )
    console.print(files)


@app.command()
@handle_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: lake.host).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind (default: lake.port, 8200).")
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Serve the lake's REST API (/api/lake), with OpenAPI docs at /docs."""
    from aimesh.lake.app import create_app

    lake = settings().lake
    serve_service_app(
        "lake",
        create_app,
        host=host or lake.host,
        port=lake.port if port is None else port,
        insecure=insecure,
    )


# -- rendering -------------------------------------------------------------------------------

_FILES_SHOWN = 20


@contextlib.contextmanager
def _working(what: str) -> Iterator[None]:
    """A spinner on the terminal while a long step runs (nothing when output is redirected)."""
    if not err_console.is_terminal:
        yield
        return
    with err_console.status(what):
        yield


def _versions(pairs: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for pair in pairs:
        name, sep, number = pair.partition("=")
        if not sep or not number.isdigit():
            raise InvalidRequest(f"--at {pair!r} must look like NAME=VERSION")
        found[name] = int(number)
    return found


def _read_at(versions: dict[str, int]) -> str | None:
    return ", ".join(f"{n}@{v}" for n, v in versions.items()) or None


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]null[/dim]"
    return escape(str(value))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"

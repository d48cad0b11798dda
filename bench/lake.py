"""Benchmark lake ingest against a plain pyarrow write of the same data.

The data is the fraud schema (an id, 30 float features, a 0/1 label; about 3% positives)
at 1M and 10M rows, as a CSV file and as a Parquet file. Each source goes through:

- **aimesh**: ``Lake.ingest`` into a new Delta table (one commit), as ``aimesh lake ingest``
  does, with its default chunk sizes;
- **pyarrow stream** (the baseline): the same streaming read (``open_csv`` with the same
  block size, ``ParquetFile.iter_batches``) into ``pq.ParquetWriter`` with row groups of the
  same size, Snappy like Delta: what a hand-written bounded-memory pyarrow job does;
- **pyarrow whole**: ``read_csv`` / ``read_table`` then ``write_table``: the fastest pyarrow
  path, which holds the whole file in memory.

Every run is its own process (so that its peak RSS is its own), repeated and interleaved
against noise; the median is reported. Targets: aimesh at least 0.8x the rows/s of the
pyarrow stream, and aimesh's peak memory set by the chunk size, not by the file size (the
same at 1M and 10M rows; it moves with ``--chunk-rows``).

    python bench/lake.py                    # 1M and 10M rows (10 to 20 minutes)
    python bench/lake.py --rows 1000000     # one size
    python bench/lake.py --quick            # 200k rows, one repeat (a smoke run)
    python bench/lake.py --json out.json    # also write every figure as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

SYSTEMS = ("aimesh", "pyarrow-stream", "pyarrow-whole")
FORMATS = ("csv", "parquet")
FEATURES = 30
TARGET_VS_STREAM = 0.8
DEFAULT_CHUNK_ROWS = 131_072
CHUNK_BYTES = 8 * 1024**2

console = Console(width=None if sys.stdout.isatty() else 120)


def fraud_schema() -> pa.Schema:
    """The fraud data set's columns."""
    return pa.schema(
        [("id", pa.int64())]
        + [(f"f{i:02d}", pa.float64()) for i in range(FEATURES)]
        + [("label", pa.int64())]
    )


def generate(rows: int, folder: Path) -> dict[str, Path]:
    """``rows`` fraud rows as fraud-<rows>.csv and .parquet (kept between runs)."""
    paths = {fmt: folder / f"fraud-{rows}.{fmt}" for fmt in FORMATS}
    if all(p.exists() for p in paths.values()):
        return paths
    console.print(f"generating {rows:,} rows of fraud data in {folder} ...")
    schema = fraud_schema()
    rng = np.random.default_rng(7)
    partial = {fmt: p.with_name(p.name + ".partial") for fmt, p in paths.items()}
    with (
        pq.ParquetWriter(partial["parquet"], schema) as parquet,
        pacsv.CSVWriter(partial["csv"], schema) as csv,
    ):
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            columns = [pa.array(np.arange(start, start + n))]
            columns += [pa.array(np.round(rng.normal(size=n), 6)) for _ in range(FEATURES)]
            columns.append(pa.array((rng.random(n) < 0.03).astype(np.int64)))
            batch = pa.record_batch(columns, schema=schema)
            parquet.write_batch(batch)
            csv.write_batch(batch)
    for fmt, path in paths.items():
        partial[fmt].rename(path)
    return paths


# -- one run, in its own process -------------------------------------------------------------


@dataclass
class Run:
    """What one run of one system on one source measured."""

    system: str
    fmt: str
    rows: int
    chunk_rows: int
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    start_rss_mib: float
    output_mib: float

    @property
    def rows_per_s(self) -> float:
        """Rows written per second of wall time."""
        return self.rows / self.seconds


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2


def worker(system: str, source: Path, out: Path, chunk_rows: int) -> Run:
    """Run ``system`` once on ``source`` into ``out`` (in this process) and measure it."""
    if system == "aimesh":  # only its own run pays for importing it
        from aimesh.lake import Lake
        from aimesh.lake.delta import DeltaTables

    start_rss = _rss_mib()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if system == "aimesh":
        lake = Lake(DeltaTables(str(out)), chunk_rows=chunk_rows, chunk_bytes=CHUNK_BYTES)
        rows = lake.ingest("fraud", [source]).rows
    elif system == "pyarrow-stream":
        rows = _pyarrow_stream(source, out, chunk_rows)
    else:
        out.mkdir(parents=True)
        table = pacsv.read_csv(source) if source.suffix == ".csv" else pq.read_table(source)
        pq.write_table(table, out / "part-0.parquet", compression="snappy")
        rows = table.num_rows
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    return Run(
        system=system,
        fmt=source.suffix.lstrip("."),
        rows=rows,
        chunk_rows=chunk_rows,
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        start_rss_mib=start_rss,
        output_mib=size / 1024**2,
    )


def _pyarrow_stream(source: Path, out: Path, chunk_rows: int) -> int:
    out.mkdir(parents=True)
    if source.suffix == ".csv":
        reader = pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=CHUNK_BYTES))
    else:
        parquet = pq.ParquetFile(source, pre_buffer=False)
        reader = pa.RecordBatchReader.from_batches(
            parquet.schema_arrow, parquet.iter_batches(batch_size=chunk_rows)
        )
    rows = 0
    pending: list[pa.RecordBatch] = []
    waiting = 0
    with pq.ParquetWriter(out / "part-0.parquet", reader.schema, compression="snappy") as w:
        for batch in reader:
            pending.append(batch)
            waiting += batch.num_rows
            while waiting >= chunk_rows:  # whole row groups of chunk_rows, like the lake's
                table = pa.Table.from_batches(pending)
                w.write_table(table.slice(0, chunk_rows), row_group_size=chunk_rows)
                rest = table.slice(chunk_rows)
                pending, waiting = rest.to_batches(), rest.num_rows
                rows += chunk_rows
        if waiting:
            w.write_table(pa.Table.from_batches(pending), row_group_size=chunk_rows)
            rows += waiting
    return rows


def measure(system: str, source: Path, chunk_rows: int, scratch: Path) -> Run:
    """One run in a fresh process."""
    out = scratch / f"out-{system}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", system, str(source), str(out), str(chunk_rows)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{system} on {source.name} failed:\n{exc.stderr}") from exc
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


# -- the report --------------------------------------------------------------------------------


def median(runs: list[Run]) -> Run:
    """The run with the median wall time."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2]


def report(results: dict[tuple[str, str, int, int], list[Run]], chunk_rows: int) -> list[str]:
    """Print the tables; return the verdict lines."""
    verdicts: list[str] = []
    sizes = sorted({k[2] for k in results})
    for fmt in FORMATS:
        table = Table(
            "rows", "system", "rows/s", "s (median)", "cpu s", "start RSS MiB", "peak RSS MiB",
            "vs stream", "vs whole", title=f"{fmt.upper()} source, chunk {chunk_rows:,} rows",
        )  # fmt: skip
        for rows in sizes:
            runs = {s: results.get((s, fmt, rows, chunk_rows)) for s in SYSTEMS}
            if not all(runs.values()):
                continue
            best = {s: median(r) for s, r in runs.items() if r}
            for system, run in best.items():
                table.add_row(
                    f"{rows:,}",
                    system,
                    f"{run.rows_per_s:,.0f}",
                    f"{run.seconds:.2f}",
                    f"{run.cpu_seconds:.2f}",
                    f"{run.start_rss_mib:,.0f}",
                    f"{run.peak_rss_mib:,.0f}",
                    f"{run.rows_per_s / best['pyarrow-stream'].rows_per_s:.2f}x",
                    f"{run.rows_per_s / best['pyarrow-whole'].rows_per_s:.2f}x",
                )
            ratio = best["aimesh"].rows_per_s / best["pyarrow-stream"].rows_per_s
            ok = "[green]ok[/green]" if ratio >= TARGET_VS_STREAM else "[red]MISSED[/red]"
            verdicts.append(
                f"{fmt} {rows:,} rows: aimesh {ratio:.2f}x the pyarrow stream "
                f"(target >= {TARGET_VS_STREAM}x) {ok}"
            )
        console.print(table)
    return verdicts


def memory_verdicts(results: dict[tuple[str, str, int, int], list[Run]]) -> list[str]:
    """Whether aimesh's peak memory follows the chunk and not the file."""
    lines = []
    for fmt in FORMATS:
        peaks = {
            (rows, chunk): median(runs).peak_rss_mib
            for (system, f, rows, chunk), runs in results.items()
            if system == "aimesh" and f == fmt
        }
        by_size = sorted(((r, p) for (r, c), p in peaks.items() if c == DEFAULT_CHUNK_ROWS))
        if len(by_size) >= 2:
            (small, p_small), (big, p_big) = by_size[0], by_size[-1]
            flat = p_big <= p_small * 1.25
            ok = "[green]ok[/green]" if flat else "[red]MISSED[/red]"
            lines.append(
                f"{fmt}: aimesh peak RSS {p_small:,.0f} MiB at {small:,} rows, {p_big:,.0f} MiB "
                f"at {big:,} rows ({big // small}x the data) {ok}"
            )
        by_chunk = sorted((c, p) for (r, c), p in peaks.items() if r == min(r for r, _ in peaks))
        if len(by_chunk) >= 2:
            lines.append(
                f"{fmt}: aimesh peak RSS by chunk: "
                + ", ".join(f"{c:,} rows -> {p:,.0f} MiB" for c, p in by_chunk)
            )
    return lines


def main() -> None:
    """Parse the arguments, run the benchmark, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="Rows (repeatable).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per cell under 5M rows.")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument(
        "--chunk-sweep",
        type=int,
        action="append",
        default=[],
        help="Also measure aimesh's memory at these chunk sizes (smallest size only).",
    )
    parser.add_argument("--quick", action="store_true", help="200k rows, one repeat.")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "aimesh-bench")
    parser.add_argument("--json", type=Path, help="Also write every run here.")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        system, source, out, chunk = args.worker
        print(json.dumps(asdict(worker(system, Path(source), Path(out), int(chunk)))))
        return

    sizes = [200_000] if args.quick else (args.rows or [1_000_000, 10_000_000])
    repeat = 1 if args.quick else args.repeat
    args.data.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="aimesh-bench-lake-"))
    console.print(
        f"{platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"pyarrow {pa.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    results: dict[tuple[str, str, int, int], list[Run]] = {}
    try:
        for rows in sizes:
            paths = generate(rows, args.data)
            times = repeat if rows < 5_000_000 else 1
            for _ in range(times):  # interleaved, so that noise hits every system alike
                for fmt in FORMATS:
                    for system in SYSTEMS:
                        run = measure(system, paths[fmt], args.chunk_rows, scratch)
                        results.setdefault((system, fmt, rows, args.chunk_rows), []).append(run)
                        console.print(
                            f"  {rows:,} {fmt:8} {system:15} {run.seconds:7.2f}s "
                            f"{run.rows_per_s:>12,.0f} rows/s  peak {run.peak_rss_mib:,.0f} MiB",
                            highlight=False,
                        )
        for chunk in args.chunk_sweep:
            rows = min(sizes)
            paths = generate(rows, args.data)
            for fmt in FORMATS:
                run = measure("aimesh", paths[fmt], chunk, scratch)
                results.setdefault(("aimesh", fmt, rows, chunk), []).append(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    verdicts = report(results, args.chunk_rows)
    for line in verdicts + memory_verdicts(results):
        console.print(line)
    console.print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        every = [
            asdict(r) | {"rows_per_s": r.rows_per_s} for runs in results.values() for r in runs
        ]
        args.json.write_text(json.dumps(every, indent=1))


if __name__ == "__main__":
    main()

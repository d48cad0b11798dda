"""Benchmark ``aimesh serve`` against a plain FastAPI app and a bare ASGI ceiling.

For the demo fraud model as LogisticRegression and as HistGradientBoostingClassifier:
throughput and p50/p99 latency at concurrency 1, 16 and 64, over REST and gRPC, batching
on and off; in the same run, the same model behind a typical FastAPI + uvicorn app (the
baseline) and behind a raw ASGI app with msgspec on the same uvicorn (the ceiling).

Every server is one process on a free 127.0.0.1 port; the load comes from one separate
process per measurement (``_load.py``). Then the figures, the ratios and the verdict on
the target: at concurrency 64, at least 2x the baseline's throughput with a p99 no worse
than its, and at least 0.8x the ceiling.

    python bench/serving.py                  # the full run (4 to 7 minutes)
    python bench/serving.py --quick          # a smoke run (about a minute)
    python bench/serving.py --json out.json  # also write every figure as JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
from _load import DRAIN_S, LoadResult
from _models import KINDS, BenchModel, prepare
from _report import (
    AIMESH,
    BARE,
    FASTAPI,
    HEADLINE,
    NOISY_CPU,
    Cell,
    System,
    print_errors,
    print_noise,
    print_tables,
    print_verdicts,
    verdicts,
)
from _servers import (
    AIMESH_COMMAND,
    BENCH_DIR,
    Server,
    ServerFailed,
    aimesh_server,
    baseline_server,
    batch_counts,
    busy,
    check_grpc,
    check_rest,
    dropped_variables,
    interrupt_on_sigterm,
    workdir,
)
from rich.console import Console

RETRY_BUDGET_S = 300.0
"""No cell is measured again after this many seconds, so that the run stays bounded."""

# Wide enough for the tables when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 130)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to measure and for how long."""

    models: list[str]
    concurrencies: list[int]
    duration_s: float
    warmup_s: float
    fastapi_route: str
    target_concurrency: int
    aimesh_command: list[str]
    retries: int
    retry_until: float
    """``time.monotonic()`` after which no cell is measured again (bounds the run)."""


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    """The command line, as a plan."""
    parser = argparse.ArgumentParser(
        prog="python bench/serving.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 when the run completed (with --check: and the target was met).",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, metavar="SECONDS", help="measured time per cell"
    )
    parser.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s cells, concurrency 1 and 64"
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="comma-separated (default: 1,16,64)"
    )
    parser.add_argument(
        "--models", default=",".join(KINDS), help=f"comma-separated among {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--fastapi-route",
        choices=["async", "sync"],
        default="async",
        help="the baseline's route: async def (model inline) or def (thread pool)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="measure a cell again, up to N times, when other processes disturbed it "
        "(default 1; the quietest attempt is kept; no retries after 5 minutes)",
    )
    parser.add_argument(
        "--aimesh-command",
        default=shlex.join(AIMESH_COMMAND),
        metavar="CMD",
        help="the command that runs aimesh, to measure another build (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, homes)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the target is met")
    args = parser.parse_args(argv)
    concurrencies = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    duration, warmup = args.duration, args.warmup
    if args.quick:
        # The warm-up stays: 64 fresh connections need most of a second on a cold server.
        concurrencies, duration = [1, 64], min(duration, 1.0)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in KINDS]
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; choose among {', '.join(KINDS)}")
    if not concurrencies or min(concurrencies) < 1 or max(concurrencies) > 1024:
        parser.error("--concurrency: numbers from 1 to 1024")
    if duration <= 0 or warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    plan = Plan(
        models=models,
        concurrencies=concurrencies,
        duration_s=duration,
        warmup_s=warmup,
        fastapi_route=args.fastapi_route,
        aimesh_command=shlex.split(args.aimesh_command),
        retries=max(0, args.retries),
        retry_until=time.monotonic() + RETRY_BUDGET_S,
        target_concurrency=64 if 64 in concurrencies else max(concurrencies),
    )
    return plan, args


# -- measuring --------------------------------------------------------------------------------


def run_load(
    plan: Plan, server: Server, protocol: str, body_file: Path, concurrency: int
) -> LoadResult:
    """One measurement, by a load generator in its own process."""
    port = server.http_port if protocol == "rest" else server.grpc_port
    argv = [sys.executable, str(BENCH_DIR / "_load.py"), protocol, "--port", str(port)]
    argv += ["--body", str(body_file), "--concurrency", str(concurrency)]
    argv += ["--warmup", str(plan.warmup_s), "--duration", str(plan.duration_s)]
    argv += ["--server-pid", str(server.pid)]
    timeout = plan.warmup_s + plan.duration_s + DRAIN_S + 60
    done = subprocess.run(
        argv, capture_output=True, timeout=timeout, start_new_session=True, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise ServerFailed(
            f"the load generator failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
        )
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=LoadResult)


def measure_server(
    plan: Plan, model: BenchModel, server: Server, systems: list[System], bodies: dict[str, Path]
) -> Iterator[Cell]:
    """Start ``server``, check its answers, and measure each of its systems in turn."""
    with server:
        protocols = {s.protocol for s in systems}
        check_rest(server, model)
        if "grpc" in protocols:
            check_grpc(server, model)
        for system in systems:
            for concurrency in plan.concurrencies:
                cell = measure_cell(plan, model, server, system, bodies, concurrency)
                for _ in range(plan.retries):
                    if not _noisy(cell) or time.monotonic() > plan.retry_until:
                        break
                    _progress(cell, retrying=True)
                    again = measure_cell(plan, model, server, system, bodies, concurrency)
                    cell = min(cell, again, key=lambda c: c.other_cpu or 0.0)
                _progress(cell)
                yield cell


def measure_cell(
    plan: Plan,
    model: BenchModel,
    server: Server,
    system: System,
    bodies: dict[str, Path],
    concurrency: int,
) -> Cell:
    """One load run against ``server``, with aimesh's batch sizes when it batches."""
    before = batch_counts(server.http_port) if system.batching else None
    result = run_load(plan, server, system.protocol, bodies[system.protocol], concurrency)
    per_call = None
    if before is not None:
        after = batch_counts(server.http_port)
        calls = after[1] - before[1]
        per_call = (after[0] - before[0]) / calls if calls else None
    return Cell(model.kind, system, concurrency, result, per_call)


def _noisy(cell: Cell) -> bool:
    return (cell.other_cpu or 0.0) > NOISY_CPU


def _progress(cell: Cell, *, retrying: bool = False) -> None:
    r = cell.result
    errors = f", [red]{r.errors} errors[/]" if r.errors else ""
    if _noisy(cell):
        errors += f", [yellow]other processes used {cell.other_cpu:.2f} cores[/]"
    if retrying:
        errors += "; measuring again"
    console.print(
        f"  {cell.system.label:<22} c={cell.concurrency:<3} {r.rps:8.0f} req/s  "
        f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms{errors}",
        highlight=False,
    )


def run(plan: Plan, folder: Path) -> list[Cell]:
    """Every model, every server, every cell; servers and the bus stopped whatever happens."""
    from aimesh.bus import EmbeddedNats

    cells: list[Cell] = []
    with console.status("training the models and pushing them to their homes"):
        models = [prepare(kind, folder) for kind in plan.models]
    logs = folder / "logs"
    logs.mkdir()
    with EmbeddedNats(folder / "bus") as bus:
        for model in models:
            console.rule(f"{model.title}")
            bodies = {"rest": folder / f"{model.kind}.json", "grpc": folder / f"{model.kind}.pb"}
            bodies["rest"].write_bytes(model.json_body)
            bodies["grpc"].write_bytes(model.grpc_body)
            batching_on = [s for s in AIMESH if s.batching]
            batching_off = [s for s in AIMESH if not s.batching]
            route = plan.fastapi_route
            aimesh = functools.partial(aimesh_server, command=plan.aimesh_command)
            servers: list[tuple[Server, list[System]]] = [
                (baseline_server("fastapi", model, logs, route=route), [FASTAPI]),
                (baseline_server("bare", model, logs, route=route), [BARE]),
                (aimesh(model, bus.url, logs, batching=True), batching_on),
                (aimesh(model, bus.url, logs, batching=False), batching_off),
            ]
            for server, systems in servers:
                try:
                    for cell in measure_server(plan, model, server, systems, bodies):
                        cells.append(cell)
                except ServerFailed as exc:
                    console.print(f"[red]{server.name} failed:[/] {exc}", highlight=False)
    return cells


# -- the command ------------------------------------------------------------------------------


class Machine(msgspec.Struct):
    """Where the figures were taken."""

    cpus: int
    python: str
    platform: str
    busy_before: float
    """Share of all CPUs busy during the second before the run (other processes: noise)."""
    uvicorn: str
    fastapi: str
    grpcio: str


def _machine() -> Machine:
    import fastapi
    import grpc
    import uvicorn

    return Machine(
        cpus=os.cpu_count() or 0,
        python=platform.python_version(),
        platform=platform.platform(),
        busy_before=busy(),
        uvicorn=uvicorn.__version__,
        fastapi=fastapi.__version__,
        grpcio=grpc.__version__,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    plan, args = parse_args(argv)
    interrupt_on_sigterm()
    machine = _machine()
    console.print(
        f"[bold]aimesh serving benchmark[/]: {', '.join(KINDS[m] for m in plan.models)}; "
        f"concurrency {', '.join(map(str, plan.concurrencies))}; {plan.duration_s:g} s per cell "
        f"after {plan.warmup_s:g} s warm-up; FastAPI route: {plan.fastapi_route} def; "
        "native threads as shipped (aimesh caps its own); variables of this shell not passed "
        f"to the servers: {dropped_variables()}",
        highlight=False,
    )
    console.print(
        f"machine: {machine.cpus} CPUs, Python {machine.python}, uvicorn {machine.uvicorn}, "
        f"FastAPI {machine.fastapi}, grpcio {machine.grpcio}; "
        f"{machine.busy_before:.0%} of the CPUs busy before the run",
        highlight=False,
    )
    if machine.busy_before > 0.1:
        console.print("[yellow]other processes are using the CPUs: expect noisy figures[/]")
    started = time.monotonic()
    try:
        with workdir(args.keep, "aimesh-bench-") as folder:
            cells = run(plan, folder)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every server is stopped[/]")
        return 130
    print_tables(console, cells)
    print_errors(console, cells)
    print_noise(console, cells)
    found = verdicts(cells, plan.target_concurrency)
    met = print_verdicts(console, found)
    console.print(f"took {time.monotonic() - started:.0f} s", highlight=False)
    if args.json is not None:
        report = {
            "machine": machine,
            "plan": dataclasses.asdict(plan),
            "cells": cells,
            "verdicts": [
                msgspec.to_builtins(v) | {"met": v.met, "headline": v.system == HEADLINE}
                for v in found
            ],
            "target_met": met,
        }
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
        console.print(f"figures written to {args.json}")
    if args.check and not met:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

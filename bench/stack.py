"""Benchmark the stack a user starts: ``make run``'s stack loaded by wrk, through the
gateway and direct to one replica, in one run.

What ``make run`` starts is ``aimesh demo``: the embedded bus, the registry, lake and jobs
services, two replicas of ``fraud@champion`` (HistGradientBoosting), the workers and the
gateway. This starts exactly that, in a scratch folder, with the environment this process
was given (nothing is exported for it: no thread caps, no settings), then loads it with
``wrk`` (an outside generator, Debian's package) at 64 connections:

- direct to one replica's REST port (the baseline),
- through the gateway (which spreads the load over both replicas),

alternating, ``--rounds`` times each. Target (issue 11): through the gateway at least 0.7x
direct's throughput, and p99 through the gateway at most 2x direct's.

    python bench/stack.py                   # about 3 minutes
    python bench/stack.py --duration 5 --rounds 1
    python bench/stack.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _servers import preamble, server_env, workdir
from rich.console import Console
from rich.table import Table

FEATURES = 30  # the fraud model's input width
CONNECTIONS = 64
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    """One wrk run: throughput, latency percentiles, and answers that were not 2xx."""

    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: str


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(target: str, output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"wrk printed no figures:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        target=target,
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=", ".join(
            f"{kind} {n}"
            for kind, n in zip(
                ("connect", "read", "write", "timeout"), errors.groups(), strict=True
            )
            if n != "0"
        )
        if errors
        else "",
    )


def wrk(target: str, url: str, script: Path, duration: float) -> WrkResult:
    """``wrk`` at 64 connections on two threads against ``url``."""
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency", "-s", str(script)]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-2000:]}")
    return parse_wrk(target, done.stdout)


def wrk_script(folder: Path) -> Path:
    """A wrk script that POSTs one fraud row as an OIP v2 JSON request."""
    body = {
        "inputs": [
            {"name": "input-0", "shape": [1, FEATURES], "datatype": "FP64", "data": [0.1] * 30}
        ]
    }
    script = folder / "infer.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    return script


def start_stack(folder: Path, console: Console) -> subprocess.Popen[bytes]:
    """``aimesh demo`` in ``folder`` (what ``make run`` runs), once its stack answers."""
    log = (folder / "demo.log").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "aimesh", "demo"],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**server_env(), "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 600
    with console.status("starting the stack as `make run` does (aimesh demo)"):
        while "the stack runs" not in (folder / "demo.log").read_text(errors="replace"):
            if demo.poll() is not None or time.monotonic() > deadline:
                said = (folder / "demo.log").read_text(errors="replace")
                raise RuntimeError(f"aimesh demo did not start:\n{said}")
            time.sleep(0.5)
    return demo


def stack_ports(folder: Path) -> tuple[int, list[int]]:
    """The gateway's REST port and every model replica's, from ``aimesh status --json``."""
    done = subprocess.run(
        [sys.executable, "-m", "aimesh", "status", "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout)
    processes = [p["process"] for p in report["processes"]]
    gateway = next(p["http_port"] for p in processes if p["kind"] == "gateway")
    replicas = [p["http_port"] for p in processes if p["kind"] == "model"]
    return gateway, replicas


def stop_stack(demo: subprocess.Popen[bytes], folder: Path) -> None:
    """Ctrl-C the demo (it stops its stack), then stop the embedded bus of its home."""
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    subprocess.run(
        [sys.executable, "-m", "aimesh", "bus", "stop"], cwd=folder, capture_output=True, timeout=60
    )


def report(console: Console, results: list[WrkResult]) -> bool:
    """The table of every run and the verdict on medians; True when the target is met."""
    table = Table(title=f"make run's stack, wrk -c{CONNECTIONS} (REST, one fraud row)")
    for column in ("target", "req/s", "p50 ms", "p99 ms", "non-2xx", "socket errors"):
        table.add_column(column, justify="right" if column != "target" else "left")
    for r in results:
        table.add_row(
            r.target, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.non_2xx),
            r.socket_errors or "-",
        )  # fmt: skip
    console.print(table)

    def median(target: str, field: str) -> float:
        values: list[float] = sorted(getattr(r, field) for r in results if r.target == target)
        return values[len(values) // 2]

    rps_ratio = median("gateway", "rps") / median("direct", "rps")
    p99_ratio = median("gateway", "p99_ms") / median("direct", "p99_ms")
    ok = rps_ratio >= 0.7 and p99_ratio <= 2.0
    console.print(
        f"through the gateway: [bold]{rps_ratio:.2f}x[/bold] direct's throughput (target >= 0.7), "
        f"p99 [bold]{p99_ratio:.2f}x[/bold] direct's (target <= 2): "
        + ("[green]met[/green]" if ok else "[red]not met[/red]")
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each target")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    console = Console()
    preamble(console)
    results: list[WrkResult] = []
    with workdir(args.keep, "aimesh-bench-stack-") as folder:
        demo = start_stack(folder, console)
        try:
            gateway, replicas = stack_ports(folder)
            console.print(f"gateway :{gateway}, replicas {', '.join(f':{p}' for p in replicas)}")
            script = wrk_script(folder)
            infer = "/v2/models/fraud/infer"
            wrk("warm-up", f"http://127.0.0.1:{gateway}{infer}", script, 3)
            for _ in range(args.rounds):
                for target, port in (("direct", replicas[0]), ("gateway", gateway)):
                    with console.status(f"wrk {target} for {args.duration:g}s"):
                        results.append(
                            wrk(target, f"http://127.0.0.1:{port}{infer}", script, args.duration)
                        )
        finally:
            stop_stack(demo, folder)
    met = report(console, results)
    if args.json:
        args.json.write_text(json.dumps({"met": met, "runs": [asdict(r) for r in results]}))


if __name__ == "__main__":
    main()

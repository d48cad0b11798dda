"""Benchmark the gateway hop: the fraud model direct, through the gateway to one replica,
and through the gateway to two replicas, at concurrency 1, 16 and 64, in one run.

Targets (issue 4): the hop costs at most 0.5 ms at p50 at concurrency 1, and through-
gateway throughput is at least 70% of direct at concurrency 64.

    python bench/gateway.py                 # about 3 minutes
    python bench/gateway.py --duration 2    # quicker, noisier
    python bench/gateway.py --json out.json

Every server is its own process on a free 127.0.0.1 port; the load comes from a separate
process (``_load.py``) per measurement. Servers are stopped at the end, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from _load import DRAIN_S, LoadResult
from _models import prepare
from _servers import Server, aimesh_server, free_port, server_env
from rich.console import Console
from rich.table import Table

from aimesh.bus import EmbeddedNats

BENCH_DIR = Path(__file__).resolve().parent
CONCURRENCIES = (1, 16, 64)


def load_argv(server: Server, body: Path, concurrency: int, duration: float) -> list[str]:
    """The command of one REST measurement of ``server`` (one second of warm-up first)."""
    argv = [sys.executable, str(BENCH_DIR / "_load.py"), "rest", "--port", str(server.http_port)]
    argv += ["--body", str(body), "--concurrency", str(concurrency)]
    argv += ["--warmup", "1", "--duration", str(duration), "--server-pid", str(server.pid)]
    return argv


def load_result(returncode: int, stdout: bytes, stderr: bytes) -> LoadResult:
    """What the load generator printed, or why it failed."""
    if returncode != 0 or not stdout.strip():
        raise RuntimeError(f"load generator failed: {stderr.decode()[-2000:]}")
    return msgspec.json.decode(stdout.strip().splitlines()[-1], type=LoadResult)


def load(server: Server, body: Path, concurrency: int, duration: float) -> LoadResult:
    """One REST measurement by a load generator in its own process."""
    argv = load_argv(server, body, concurrency, duration)
    done = subprocess.run(argv, capture_output=True, timeout=duration + DRAIN_S + 60, check=False)
    return load_result(done.returncode, done.stdout, done.stderr)


def gateway_server(
    home: Path,
    bus_url: str,
    body: bytes,
    log_dir: Path,
    *,
    name: str = "gateway",
    settings: dict[str, str] | None = None,
) -> Server:
    """``aimesh gateway serve`` on free ports, ready once an inference through it answers.

    ``settings``: ``AIMESH_*`` variables this gateway alone gets (a benchmark that sets one
    prints it beside its figures); its log is ``log_dir/<name>.log``.
    """
    port, grpc_port = free_port(), free_port()
    env = server_env() | {"AIMESH_HOME": str(home), "AIMESH_BUS__URL": bus_url}
    env |= settings or {}
    argv = [sys.executable, "-m", "aimesh", "gateway", "serve"]
    argv += ["--port", str(port), "--grpc-port", str(grpc_port)]
    return Server(
        name, argv, http_port=port, grpc_port=grpc_port, body=body,
        log=log_dir / f"{name}.log", env=env,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    console = Console()
    rows: dict[str, dict[int, LoadResult]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="aimesh-bench-gw-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        with console.status("training the fraud model"):
            model = prepare("logreg", folder)
        body = folder / "body.json"
        body.write_bytes(model.json_body)
        bus = stack.enter_context(EmbeddedNats(folder / "bus"))
        replica_a = stack.enter_context(aimesh_server(model, bus.url, folder, batching=True))
        gateway = stack.enter_context(gateway_server(model.home, bus.url, model.json_body, folder))
        for c in CONCURRENCIES:
            with console.status(f"concurrency {c}: direct and through the gateway (one replica)"):
                rows.setdefault("direct (1 replica)", {})[c] = load(
                    replica_a, body, c, args.duration
                )
                rows.setdefault("gateway -> 1 replica", {})[c] = load(
                    gateway, body, c, args.duration
                )
        replica_b = aimesh_server(model, bus.url, folder, batching=True)
        replica_b.log = folder / "replica-b.log"
        stack.enter_context(replica_b)
        time.sleep(3)  # the gateway learns of the new replica from its discovery watch
        for c in CONCURRENCIES:
            with console.status(f"concurrency {c}: through the gateway (two replicas)"):
                rows.setdefault("gateway -> 2 replicas", {})[c] = load(
                    gateway, body, c, args.duration
                )

    table = Table("path", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "vs direct")
    for name, by_c in rows.items():
        for c, r in by_c.items():
            direct = rows["direct (1 replica)"][c]
            table.add_row(
                name, str(c), f"{r.rps:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
                str(r.errors), f"{r.rps / direct.rps:.2f}x",
            )  # fmt: skip
    console.print(table)
    hop = rows["gateway -> 1 replica"][1].p50_ms - rows["direct (1 replica)"][1].p50_ms
    share = rows["gateway -> 1 replica"][64].rps / rows["direct (1 replica)"][64].rps
    console.print(f"gateway hop at concurrency 1 (p50): {hop:.3f} ms (target <= 0.5 ms): "
                  + ("met" if hop <= 0.5 else "NOT met"))  # fmt: skip
    console.print(f"through-gateway throughput at concurrency 64: {share:.2f}x direct "
                  "(target >= 0.70): " + ("met" if share >= 0.7 else "NOT met"))  # fmt: skip
    if args.json:
        args.json.write_bytes(msgspec.json.encode(rows))


if __name__ == "__main__":
    main()

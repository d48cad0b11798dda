"""Benchmark async inference end to end against the synchronous call, through the gateway.

One stack of real processes, each on free 127.0.0.1 ports: the bundled nats-server
(JetStream in a temp folder), ``aimesh registry serve``, ``aimesh serve fraud@champion``
(the demo's logistic regression), ``aimesh jobs serve``, ``aimesh worker inference`` and
``aimesh gateway serve``. This process is the client (httpx.AsyncClient, C lanes, each a
closed loop) and measures, in the same run, the paths a client can take:

- **sync** (the baseline): ``POST /v2/models/fraud/infer`` -> 200 with the answer;
- **async + poll**: ``POST ...infer?async=true`` -> 202, then ``GET /api/jobs/{id}`` every
  few ms until ``succeeded``, then ``GET /api/jobs/{id}/result``;
- **async + SSE**: the same 202, then ``GET /api/jobs/{id}/events`` until the ``succeeded``
  event, then ``GET /api/jobs/{id}/result``;
- **submit only**: the 202 and nothing more (the worker drains the backlog afterwards).

Latency is from the first byte sent to the model's answer in hand (the 202 for submit
only); the time to the 202 of the two end-to-end paths is reported too. Rounds interleave
the paths, so that a burst of noise from other processes lands on all of them; samples
are pooled over rounds. There is no target: the ratios to the sync call are the figures.

    python bench/async_inference.py                  # 3 rounds of 500 calls per cell (~2 min)
    python bench/async_inference.py --quick          # 1 round of 100 (about 20 s)
    python bench/async_inference.py --json out.json  # also write every figure
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import msgspec
from _cpu import machine_cpu_s
from _models import ALIAS, INFER_PATH, MODEL_NAME, BenchModel, prepare
from _servers import (
    Server,
    ServerFailed,
    aimesh_server,
    busy,
    free_port,
    interrupt_on_sigterm,
    server_env,
    workdir,
)
from rich.console import Console
from rich.table import Table

from aimesh.bus import EmbeddedNats
from aimesh.jobs import TERMINAL

# Wide enough for the table when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 150)

SYNC, POLL, SSE, SUBMIT = "sync", "poll", "sse", "submit"
PATHS = (SYNC, POLL, SSE, SUBMIT)
"""In the order a round measures them; submit only last, as it leaves a backlog."""
START_TIMEOUT_S = 90.0  # a loaded 2-core machine starts six Python processes slowly
DRAIN_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to measure and how much."""

    concurrencies: list[int]
    rounds: int
    calls: int
    """Measured calls per path, concurrency and round."""
    warmup: int
    """Unmeasured calls before each cell (at least two per lane)."""
    poll_ms: float
    worker_concurrency: int


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    """The command line, as a plan."""
    parser = argparse.ArgumentParser(
        prog="python bench/async_inference.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 100 calls per cell, 20 warm-up calls (overrides those options)",
    )
    parser.add_argument("--rounds", type=int, default=3, metavar="N")
    parser.add_argument(
        "--calls", type=int, default=500, metavar="N", help="measured calls per cell and round"
    )
    parser.add_argument("--warmup", type=int, default=30, metavar="N", help="calls per cell")
    parser.add_argument(
        "--concurrency", default="1,8", help="client lanes, comma-separated (default: 1,8)"
    )
    parser.add_argument(
        "--poll-ms", type=float, default=5.0, metavar="MS", help="poll interval (default 5)"
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=8,
        metavar="N",
        help="jobs the inference worker runs at once (default 8)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    rounds, calls, warmup = args.rounds, args.calls, args.warmup
    if args.quick:
        rounds, calls, warmup = 1, 100, 20
    concurrencies = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not concurrencies or concurrencies[0] < 1 or concurrencies[-1] > 256:
        parser.error("--concurrency: numbers from 1 to 256")
    if rounds < 1 or calls < 1 or warmup < 0 or args.poll_ms <= 0:
        parser.error("--rounds and --calls must be positive, --warmup not negative")
    plan = Plan(concurrencies, rounds, calls, warmup, args.poll_ms, args.worker_concurrency)
    return plan, args


# -- the stack --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stack:
    """The running stack, as the client sees it."""

    gateway: str
    worker_metrics: str
    pids: list[int]
    """Every process of the stack (the bus included), for their CPU time."""


def _service(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "aimesh", *argv, "--port", str(port)]
    return Server(
        name, argv, http_port=port, log=logs / f"{name}.log", env=env,
        start_timeout_s=START_TIMEOUT_S, ready_path="/health",
    )  # fmt: skip


@contextlib.contextmanager
def running_stack(plan: Plan, model: BenchModel, folder: Path) -> Iterator[Stack]:
    """Start the bus and the five services; stop them in reverse order whatever happens."""
    logs = folder / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        bus = stack.enter_context(EmbeddedNats(folder / "bus", start_timeout=30))
        env = server_env() | {"AIMESH_HOME": str(model.home), "AIMESH_BUS__URL": bus.url}
        registry = stack.enter_context(_service("registry", ["registry", "serve"], env, logs))
        served = aimesh_server(model, bus.url, logs, batching=True)
        served.start_timeout_s = START_TIMEOUT_S
        stack.enter_context(served)
        jobs = stack.enter_context(_service("jobs", ["jobs", "serve"], env, logs))
        worker_argv = ["worker", "inference", "--concurrency", str(plan.worker_concurrency)]
        worker = stack.enter_context(_service("worker", worker_argv, env, logs))
        port, grpc_port = free_port(), free_port()
        argv = [sys.executable, "-m", "aimesh", "gateway", "serve"]
        argv += ["--port", str(port), "--grpc-port", str(grpc_port)]
        gateway = Server(
            "gateway", argv, http_port=port, grpc_port=grpc_port, body=model.json_body,
            log=logs / "gateway.log", env=env, start_timeout_s=START_TIMEOUT_S,
        )  # fmt: skip
        stack.enter_context(gateway)
        url = f"http://127.0.0.1:{port}"
        _wait_for_jobs_route(url, gateway)
        pids = [p.pid for p in (registry, served, jobs, worker, gateway)]
        yield Stack(url, f"http://127.0.0.1:{worker.http_port}/metrics", [*pids, bus.pid or 0])


def _wait_for_jobs_route(gateway: str, server: Server) -> None:
    """The gateway proxies /api/jobs once it has found the jobs service in discovery."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{gateway}/api/jobs", params={"limit": 1}, timeout=5).is_success:
                return
        time.sleep(0.1)
    raise ServerFailed(f"the gateway never proxied /api/jobs: {server.tail()}")


# -- the client -------------------------------------------------------------------------------


class CallFailed(Exception):
    """Raised when a call's answer is not the one the path expects."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One call as the client saw it."""

    total_ns: int
    """Until the model's answer was in hand (the 202 for submit only)."""
    accepted_ns: int = 0
    """Until the 202 (async paths)."""
    done_ns: int = 0
    """Until the client knew the job had ended (poll and SSE)."""
    polls: int = 0


class _State(msgspec.Struct):
    state: str


class _Accepted(msgspec.Struct):
    id: str


_state = msgspec.json.Decoder(_State)
_accepted = msgspec.json.Decoder(_Accepted)


class Client:
    """The four paths, over one keep-alive connection pool to the gateway."""

    def __init__(self, http: httpx.AsyncClient, body: bytes, poll_s: float) -> None:
        self.http = http
        self.body = body
        self.poll_s = poll_s
        self.submitted = 0
        """Jobs the gateway accepted so far (what the worker must have ended to be idle)."""

    async def sync(self) -> Sample:
        """The baseline: the model's answer in place."""
        start = time.perf_counter_ns()
        await self._expect(200, self.http.post(INFER_PATH, content=self.body, headers=_JSON))
        return Sample(time.perf_counter_ns() - start)

    async def submit(self) -> Sample:
        """The 202 only."""
        start = time.perf_counter_ns()
        await self._accept()
        took = time.perf_counter_ns() - start
        return Sample(took, took)

    async def poll(self) -> Sample:
        """202, then sleep and GET the job until it has ended, then fetch the result."""
        start = time.perf_counter_ns()
        job_id = await self._accept()
        accepted = time.perf_counter_ns()
        polls = 0
        while True:
            await asyncio.sleep(self.poll_s)
            polls += 1
            record = await self._expect(200, self.http.get(f"/api/jobs/{job_id}"))
            state = _state.decode(record).state
            if state in TERMINAL:
                break
        done = time.perf_counter_ns()
        await self._result(job_id, state)
        return Sample(time.perf_counter_ns() - start, accepted - start, done - start, polls)

    async def sse(self) -> Sample:
        """202, follow the job's events until it ends, fetch the result."""
        start = time.perf_counter_ns()
        job_id = await self._accept()
        accepted = time.perf_counter_ns()
        state, done = "", 0
        async with self.http.stream("GET", f"/api/jobs/{job_id}/events") as events:
            if events.status_code != 200:
                raise CallFailed(f"events: HTTP {events.status_code}")
            # The stream ends right after the last event; reading it to its end (rather
            # than leaving at the event) keeps the connection for the next call.
            async for line in events.aiter_lines():
                if line.startswith("event: ") and line[7:] in TERMINAL:
                    state, done = line[7:], time.perf_counter_ns()
        if not state:
            raise CallFailed("the event stream ended before the job did")
        await self._result(job_id, state)
        return Sample(time.perf_counter_ns() - start, accepted - start, done - start)

    async def _accept(self) -> str:
        answer = await self._expect(
            202, self.http.post(INFER_PATH, params=_ASYNC, content=self.body, headers=_JSON)
        )
        self.submitted += 1
        return _accepted.decode(answer).id

    async def _result(self, job_id: str, state: str) -> bytes:
        if state != "succeeded":
            raise CallFailed(f"job {job_id} ended {state}")
        return await self._expect(200, self.http.get(f"/api/jobs/{job_id}/result"))

    async def check(self) -> None:
        """Raise unless the async result is the sync answer (decoded, they are equal)."""
        sync = await self._expect(200, self.http.post(INFER_PATH, content=self.body, headers=_JSON))
        job_id = await self._accept()
        deadline = time.monotonic() + CALL_TIMEOUT_S
        state = ""
        while state not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            state = _state.decode(
                await self._expect(200, self.http.get(f"/api/jobs/{job_id}"))
            ).state
        result = await self._result(job_id, state or "pending")
        if msgspec.json.decode(result) != msgspec.json.decode(sync):
            raise ServerFailed(f"the async result {result[:200]!r} is not the sync answer")

    @staticmethod
    async def _expect(status: int, call: Awaitable[httpx.Response]) -> bytes:
        response = await call
        if response.status_code != status:
            raise CallFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.content


_JSON = {"Content-Type": "application/json"}
_ASYNC = {"async": "true"}


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Cell:
    """One path at one concurrency, pooled over rounds."""

    path: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time of the measured calls, summed over rounds."""
    client_cpu_s: float = 0.0
    stack_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0
    round_p50_ms: list[float] = field(default_factory=list)


async def _lanes(
    call: Callable[[], Awaitable[Sample]], concurrency: int, n: int, cell: Cell
) -> None:
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                cell.samples.append(await call())
            except (CallFailed, httpx.HTTPError) as exc:
                cell.errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def measure(client: Client, stack: Stack, cell: Cell, plan: Plan) -> None:
    """Warm up, then ``plan.calls`` measured calls of ``cell``'s path, added to it."""
    call = {SYNC: client.sync, POLL: client.poll, SSE: client.sse, SUBMIT: client.submit}[cell.path]
    c = cell.concurrency
    await _lanes(call, c, max(plan.warmup, 2 * c), Cell(cell.path, c))
    before = len(cell.samples)
    cpu0, stack0, machine0 = time.process_time(), _cpu_s(stack.pids), machine_cpu_s() or 0.0
    start = time.perf_counter()
    await _lanes(call, c, plan.calls, cell)
    cell.seconds += time.perf_counter() - start
    cell.client_cpu_s += time.process_time() - cpu0
    cell.stack_cpu_s += _cpu_s(stack.pids) - stack0
    cell.machine_cpu_s += (machine_cpu_s() or 0.0) - machine0
    cell.round_p50_ms.append(_pct([s.total_ns for s in cell.samples[before:]], 0.5))


async def drain(http: httpx.AsyncClient, stack: Stack, submitted: int) -> None:
    """Wait until the worker has ended every job accepted so far (per its /metrics)."""
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while time.perf_counter() < deadline:
        if await _ended(http, stack.worker_metrics) >= submitted:
            return
        await asyncio.sleep(0.01)
    raise ServerFailed(f"the worker did not end {submitted} jobs in {DRAIN_TIMEOUT_S:g} s")


async def _ended(http: httpx.AsyncClient, metrics: str) -> float:
    ended = 0.0
    for line in (await http.get(metrics)).text.splitlines():
        if line.startswith("aimesh_worker_jobs_total{") and any(
            f'outcome="{o}"' in line for o in TERMINAL
        ):
            ended += float(line.rsplit(" ", 1)[1])
    return ended


@dataclass(frozen=True, slots=True)
class Backlog:
    """The jobs of one submit-only cell (its warm-up included), and when they ended."""

    concurrency: int
    jobs: int
    accepted_s: float
    """From the first submission to the last 202."""
    ended_s: float
    """From the first submission to the last job ended by the worker."""


async def submit_only(client: Client, stack: Stack, cell: Cell, plan: Plan) -> Backlog:
    """Measure ``cell`` (submit only), then wait for the worker to end its backlog."""
    jobs, start = client.submitted, time.perf_counter()
    await measure(client, stack, cell, plan)
    accepted = time.perf_counter() - start
    await drain(client.http, stack, client.submitted)
    ended = time.perf_counter() - start
    return Backlog(cell.concurrency, client.submitted - jobs, accepted, ended)


async def run(plan: Plan, stack: Stack, body: bytes) -> tuple[list[Cell], list[Backlog]]:
    """Every round, every concurrency, every path; the cells and the submit-only backlogs."""
    cells = {(p, c): Cell(p, c) for c in plan.concurrencies for p in PATHS}
    backlogs: list[Backlog] = []
    limits = httpx.Limits(max_connections=2 * max(plan.concurrencies) + 4)
    async with httpx.AsyncClient(
        base_url=stack.gateway, limits=limits, timeout=CALL_TIMEOUT_S
    ) as http:
        client = Client(http, body, plan.poll_ms / 1000)
        await client.check()
        for index in range(plan.rounds):
            for c in plan.concurrencies:
                for path in (SYNC, POLL, SSE):
                    await drain(http, stack, client.submitted)  # no job left from before
                    await measure(client, stack, cells[path, c], plan)
                    _progress(index, cells[path, c])
                await drain(http, stack, client.submitted)
                backlogs.append(await submit_only(client, stack, cells[SUBMIT, c], plan))
                _progress(index, cells[SUBMIT, c])
    return list(cells.values()), backlogs


def _progress(index: int, cell: Cell) -> None:
    samples = len(cell.samples)
    errors = f", [red]{len(cell.errors)} errors[/]" if cell.errors else ""
    console.print(
        f"  round {index + 1} {LABELS[cell.path]:<26} c={cell.concurrency:<3} "
        f"p50 {cell.round_p50_ms[-1]:7.2f} ms  ({samples} samples so far){errors}",
        highlight=False,
    )


# -- CPU time ---------------------------------------------------------------------------------


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and their waited-for children so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


# -- the report -------------------------------------------------------------------------------

LABELS = {
    SYNC: "sync (baseline)",
    POLL: "async + poll",
    SSE: "async + SSE",
    SUBMIT: "async submit only",
}


def _pct(values: list[int], q: float) -> float:
    """Nearest-rank percentile, in ms."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] / 1e6


class Figures(msgspec.Struct):
    """One cell's figures; latencies in ms."""

    path: str
    concurrency: int
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    accepted_p50_ms: float
    accepted_p99_ms: float
    done_p50_ms: float
    """When the client knew the job had ended (poll and SSE)."""
    per_second: float
    polls_per_call: float
    client_cpu: float
    """Cores this process (the client) used during the cell."""
    others_cpu: float
    """Cores used by processes outside the benchmark during the cell: noise."""
    round_p50_ms: list[float]
    error_examples: list[str]


def figures(cell: Cell) -> Figures:
    """Pool a cell's samples into its figures."""
    totals = [s.total_ns for s in cell.samples]
    accepted = [s.accepted_ns for s in cell.samples if s.accepted_ns]
    seconds = max(cell.seconds, 1e-9)
    ours = cell.client_cpu_s + cell.stack_cpu_s
    return Figures(
        path=cell.path,
        concurrency=cell.concurrency,
        calls=len(totals),
        errors=len(cell.errors),
        p50_ms=_pct(totals, 0.50),
        p99_ms=_pct(totals, 0.99),
        accepted_p50_ms=_pct(accepted, 0.50),
        accepted_p99_ms=_pct(accepted, 0.99),
        done_p50_ms=_pct([s.done_ns for s in cell.samples if s.done_ns], 0.50),
        per_second=len(totals) / seconds,
        polls_per_call=sum(s.polls for s in cell.samples) / max(1, len(totals)),
        client_cpu=cell.client_cpu_s / seconds,
        others_cpu=max(0.0, (cell.machine_cpu_s - ours) / seconds),
        round_p50_ms=cell.round_p50_ms,
        error_examples=sorted(set(cell.errors))[:3],
    )


def _num(value: float, fmt: str = ".2f") -> str:
    return "—" if math.isnan(value) else f"{value:{fmt}}"


def _x(value: float, baseline: float, fmt: str = ".1f") -> str:
    return _num(value / baseline if baseline > 0 else math.nan, fmt) + "x"


def print_table(found: list[Figures], plan: Plan) -> None:
    """A section per concurrency, a row per path, ratios against that concurrency's sync."""
    table = Table(
        "client path", "c", "calls", "p50 ms", "p99 ms", "vs sync", "calls/s", "vs sync",
        "202 ms", "done", "polls", "p50 by round", "CPU us/others", "errors",
        title="async inference through the gateway: latency as the client sees it",
    )  # fmt: skip
    table.columns[0].no_wrap = True
    for c in plan.concurrencies:
        base = next(f for f in found if f.path == SYNC and f.concurrency == c)
        for f in (f for f in found if f.concurrency == c):
            deferred = f.path in (POLL, SSE)
            table.add_row(
                LABELS[f.path] + (f" {plan.poll_ms:g} ms" if f.path == POLL else ""),
                str(c), str(f.calls), _num(f.p50_ms), _num(f.p99_ms),
                f"{_x(f.p50_ms, base.p50_ms)}/{_x(f.p99_ms, base.p99_ms)}",
                _num(f.per_second, ",.0f"), _x(f.per_second, base.per_second, ".2f"),
                f"{_num(f.accepted_p50_ms)}/{_num(f.accepted_p99_ms)}" if deferred else "",
                _num(f.done_p50_ms) if deferred else "",
                _num(f.polls_per_call, ".1f") if f.path == POLL else "",
                "-".join(_num(v) for v in (min(f.round_p50_ms), max(f.round_p50_ms)))
                if plan.rounds > 1 else "",
                f"{_num(f.client_cpu)}/{_num(f.others_cpu)}",
                f"[red]{f.errors}[/]" if f.errors else "0",
            )  # fmt: skip
        table.add_section()
    console.print(table)
    console.print(
        "p50/p99: from the request sent to the model's answer in hand (for submit only: to "
        "the 202); vs sync: p50/p99 against the sync call at the same c; calls/s: calls "
        "per second of wall time over c lanes; 202 ms: p50/p99 time to the 202 of the same "
        "calls; done: p50 time until the client knew the job had succeeded (then it fetched "
        "the result); polls: GETs of the job per call; CPU in cores: us (this client) / "
        "others (processes outside the benchmark: noise)",
        highlight=False,
    )
    for f in found:
        for example in f.error_examples:
            console.print(f"[red]{LABELS[f.path]} c={f.concurrency}:[/] {example}")


def summary(found: list[Figures], plan: Plan) -> str:
    """One line for the README."""
    by = {(f.path, f.concurrency): f for f in found}
    lo, hi = plan.concurrencies[0], plan.concurrencies[-1]
    s, p, e, a = by[SYNC, lo], by[POLL, lo], by[SSE, lo], by[SUBMIT, lo]
    line = (
        f"async inference via the gateway ({os.cpu_count()} CPUs, {plan.rounds}x{plan.calls} "
        f"calls per cell), c={lo}: sync p50 {s.p50_ms:.2f} / p99 {s.p99_ms:.2f} ms; "
        f"async end to end with SSE p50 {e.p50_ms:.2f} / p99 {e.p99_ms:.2f} ms "
        f"({e.p50_ms / s.p50_ms:.1f}x / {e.p99_ms / s.p99_ms:.1f}x sync), polling every "
        f"{plan.poll_ms:g} ms p50 {p.p50_ms:.2f} / p99 {p.p99_ms:.2f} ms "
        f"({p.p50_ms / s.p50_ms:.1f}x / {p.p99_ms / s.p99_ms:.1f}x); "
        f"202 in p50 {a.p50_ms:.2f} / p99 {a.p99_ms:.2f} ms"
    )
    if hi != lo:
        s, p, e, a = by[SYNC, hi], by[POLL, hi], by[SSE, hi], by[SUBMIT, hi]
        line += (
            f"; c={hi}: sync {s.per_second:,.0f} calls/s, async with SSE {e.per_second:,.0f} "
            f"({e.per_second / s.per_second:.2f}x), polling {p.per_second:,.0f} "
            f"({p.per_second / s.per_second:.2f}x), submit only {a.per_second:,.0f} 202/s "
            f"({a.per_second / s.per_second:.2f}x)"
        )
    return line


# -- the command ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    plan, args = parse_args(argv)
    interrupt_on_sigterm()
    busy_before = busy()
    console.print(
        f"[bold]aimesh async inference benchmark[/]: {MODEL_NAME}@{ALIAS} (logistic "
        f"regression) through the gateway; concurrency {', '.join(map(str, plan.concurrencies))}"
        f"; {plan.rounds} round(s) of {plan.calls} calls per cell after {plan.warmup} warm-up "
        f"calls; worker concurrency {plan.worker_concurrency}; {os.cpu_count()} CPUs, "
        f"{busy_before:.0%} busy before the run",
        highlight=False,
    )
    if busy_before > 0.1:
        console.print("[yellow]other processes are using the CPUs: expect noisy figures[/]")
    started = time.monotonic()
    try:
        with workdir(args.keep, "aimesh-bench-async-") as folder:
            with console.status("training the fraud model and pushing it"):
                model = prepare("lr", folder)
            with contextlib.ExitStack() as stack:
                with console.status("starting bus, registry, model, jobs, worker and gateway"):
                    running = stack.enter_context(running_stack(plan, model, folder))
                console.print(f"stack ready after {time.monotonic() - started:.0f} s")
                cells, backlogs = asyncio.run(run(plan, running, model.json_body))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every server is stopped[/]")
        return 130
    found = [figures(cell) for cell in cells]
    print_table(found, plan)
    for c in plan.concurrencies:
        mine = [b for b in backlogs if b.concurrency == c]
        jobs = sum(b.jobs for b in mine)
        accepted, ended = sum(b.accepted_s for b in mine), sum(b.ended_s for b in mine)
        console.print(
            f"submit only, c={c}: {jobs} jobs accepted in {accepted:.2f} s; the worker "
            f"(concurrency {plan.worker_concurrency}) had ended them all {ended:.2f} s after "
            f"the first was sent ({jobs / ended:,.0f} jobs/s)",
            highlight=False,
        )
    console.print(f"took {time.monotonic() - started:.0f} s", highlight=False)
    console.rule("summary")
    line = summary(found, plan)
    print(line, flush=True)
    if args.json is not None:
        report = {"plan": asdict(plan), "cells": found, "summary": line}
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
        console.print(f"figures written to {args.json}")
    return 1 if any(f.errors for f in found) else 0


if __name__ == "__main__":
    sys.exit(main())

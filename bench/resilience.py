"""Benchmark the resilience layer and rollback, in one run: what the layer costs, how soon a
killed replica stops costing clients anything, how soon a rollback reaches every gateway.

1. **Cost.** Two gateways in front of the same two replicas, one as shipped (the layer on),
   one with ``gateway.resilience.enabled: false``; ``wrk`` (an outside generator, Debian's
   package) at 64 connections against each, alternating, ``--rounds`` times. Target
   (issue 13): at most 3% of the throughput lost (medians).
2. **Failover.** Steady load (32 connections per gateway, ``_load.py``) through both
   gateways; one replica is sent SIGKILL; the time from the kill to the last client error,
   and how many requests failed. Each round kills one replica and starts a new one.
3. **Rollback.** ``aimesh models alias fraud champion 2``, then ``aimesh models rollback
   fraud`` as a user types it, while each gateway is polled without pause on
   ``/v2/models/fraud/versions/champion/infer``: the time until both answer version 1 and
   keep doing so, twice: with replicas following the alias (``aimesh serve fraud@champion``:
   the model services swap versions) and with replicas of fixed versions (``fraud@1``,
   ``fraud@2``: the gateways resolve the alias).

    python bench/resilience.py                          # about 5 minutes
    python bench/resilience.py --duration 5 --rounds 1  # quicker, noisier
    python bench/resilience.py --json out.json

Every server is its own process on free 127.0.0.1 ports (an embedded bus of its own, a home
with ``fraud`` versions 1 and 2 of the demo's logistic regression, ``champion`` -> 1),
started as a user starts it, with nothing exported for it but what is printed: the setting
that turns the layer off, for one gateway. Servers are stopped at the end, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _cpu import machine_cpu_s, process_cpu_s
from _load import DRAIN_S
from _models import ALIAS, MODEL_NAME, BenchModel, prepare
from _servers import (
    Server,
    aimesh_server,
    post,
    preamble,
    server_env,
    workdir,
)
from gateway import gateway_server, load_argv, load_result
from rich.console import Console
from rich.table import Table
from stack import wrk, wrk_script

from aimesh.bus import EmbeddedNats
from aimesh.config import Settings
from aimesh.registry import LocalRegistry, push_model

OFF = {"AIMESH_GATEWAY__RESILIENCE__ENABLED": "false"}
"""The one setting the benchmark gives: to the gateway measured with the layer off."""
OFF_LABEL = "gateway.resilience.enabled=false (AIMESH_GATEWAY__RESILIENCE__ENABLED=false)"
TARGET_LOSS = 0.03
KILL_CONNECTIONS = 32
"""Connections of the steady load on each gateway while a replica is killed (the option
``--kill-connections``)."""
BEFORE_KILL_S = 3.0
AFTER_KILL_S = 15.0
"""Load goes on this long after the kill: past the 12 s in which the dead replica's
discovery entry ages out of the gateways (twice its 6 s TTL), so that everything the kill
sets off happens under load."""
SETTLE_S = 1.0
"""A gateway has switched once it answered the old version for this long without a miss."""
CHAMPION_PATH = f"/v2/models/{MODEL_NAME}/versions/{ALIAS}/infer"
INFER_URL = f"/v2/models/{MODEL_NAME}/infer"


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """The servers of the run, and how to start more replicas."""

    model: BenchModel
    bus_url: str
    folder: Path
    exits: contextlib.ExitStack
    gateways: dict[str, Server] = field(default_factory=dict)
    replicas: list[Server] = field(default_factory=list)
    started: int = 0

    def replica(self, ref: str = ALIAS) -> Server:
        """Start ``aimesh serve fraud@<ref>`` (stopped when the run ends)."""
        self.started += 1
        server = aimesh_server(
            self.model, self.bus_url, self.folder, batching=True, ref=ref,
            name=f"replica-{self.started}-{ref}",
        )  # fmt: skip
        self.exits.callback(server.stop)
        server.start()
        return server

    @property
    def env(self) -> dict[str, str]:
        """The environment of an ``aimesh`` command a user runs against this stack."""
        return server_env() | {"AIMESH_HOME": str(self.model.home), "AIMESH_BUS__URL": self.bus_url}


def served(port: int) -> float:
    """Inference requests a model service has answered so far (its ``/metrics``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aimesh_inference_requests_total{")
    )


def wait_routed(stack: Stack, timeout_s: float = 60.0) -> None:
    """Until each gateway sends requests to every replica (it learns of a new one from
    discovery): sequential requests through it, one gateway at a time, go round the replicas."""
    for gateway in stack.gateways.values():
        deadline = time.monotonic() + timeout_s
        while True:
            before = [served(r.http_port) for r in stack.replicas]
            for _ in range(4 * len(stack.replicas)):
                post(gateway.http_port, stack.model.json_body)
            after = [served(r.http_port) for r in stack.replicas]
            if all(a > b for a, b in zip(after, before, strict=True)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{gateway.name} does not reach every replica: {gateway.tail()}")
            time.sleep(0.2)


def aimesh(stack: Stack, *args: str) -> str:
    """Run an ``aimesh`` command as a user does; its output (raises if it failed)."""
    done = subprocess.run(
        [sys.executable, "-m", "aimesh", *args],
        env=stack.env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"aimesh {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


# -- 1. what the layer costs ----------------------------------------------------------------


@dataclass
class CostRun:
    """One wrk run against one gateway."""

    gateway: str  # "on" or "off"
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: str
    gateway_cpu_us: float
    """The gateway's CPU time per request, in microseconds."""
    other_cpu: float
    """Cores used by processes other than the gateway, the replicas and wrk (noise)."""


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(pid: int) -> float:
    return process_cpu_s(pid) or 0.0


def measure_cost(stack: Stack, rounds: int, duration: float, console: Console) -> list[CostRun]:
    """wrk at 64 connections on each gateway in turn, ``rounds`` times (who goes first
    alternates), after a warm-up of each."""
    script = wrk_script(stack.folder)
    urls = {n: f"http://127.0.0.1:{g.http_port}{INFER_URL}" for n, g in stack.gateways.items()}
    for name, url in urls.items():
        with console.status(f"warming up the gateway with the layer {name}"):
            wrk("warm-up", url, script, 3)
    runs: list[CostRun] = []
    for i in range(rounds):
        for name in ("on", "off") if i % 2 == 0 else ("off", "on"):
            gateway = stack.gateways[name]
            pids = [r.pid for r in stack.replicas]
            with console.status(f"round {i + 1}: wrk on the gateway with the layer {name}"):
                cpu0, servers0 = _cpu_s(gateway.pid), sum(_cpu_s(p) for p in pids)
                machine0, wrk0, t0 = machine_cpu_s() or 0.0, _children_cpu_s(), time.monotonic()
                result = wrk(name, urls[name], script, duration)
                seconds = time.monotonic() - t0
                cpu1, servers1 = _cpu_s(gateway.pid), sum(_cpu_s(p) for p in pids)
                machine1, wrk1 = machine_cpu_s() or 0.0, _children_cpu_s()
            ours = (cpu1 - cpu0) + (servers1 - servers0) + (wrk1 - wrk0)
            runs.append(
                CostRun(
                    gateway=name, round=i + 1, rps=result.rps, p50_ms=result.p50_ms,
                    p99_ms=result.p99_ms, non_2xx=result.non_2xx,
                    socket_errors=result.socket_errors,
                    gateway_cpu_us=(cpu1 - cpu0) / max(1.0, result.rps * duration) * 1e6,
                    other_cpu=max(0.0, (machine1 - machine0 - ours) / seconds),
                )
            )  # fmt: skip
    return runs


# -- 2. a replica killed under load ---------------------------------------------------------


@dataclass
class KillRound:
    """One SIGKILL of a replica, as the clients of one gateway saw it."""

    gateway: str  # "on" or "off"
    round: int
    answered: int
    """Requests answered 200 in the load's window (after its one-second warm-up)."""
    failed: int
    """Requests that failed, the warm-up included."""
    first_error_ms: float | None
    """From the kill to the first failed request (None: none failed)."""
    last_error_ms: float | None
    """From the kill to the last failed request (None: none failed)."""
    by_kind: dict[str, int]
    """Failed requests by status and error code (or what happened to the connection)."""
    examples: list[str]


def measure_failover(
    stack: Stack, rounds: int, connections: int, console: Console
) -> list[KillRound]:
    """Each round: load both gateways, SIGKILL one replica (the two take turns), keep the
    load on for :data:`AFTER_KILL_S`, then start a replica in its place."""
    body = stack.folder / "body.json"
    out: list[KillRound] = []
    for i in range(rounds):
        index = i % len(stack.replicas)
        victim = stack.replicas[index]
        with console.status(f"round {i + 1}: load, then SIGKILL {victim.name}"):
            loads = {
                name: subprocess.Popen(
                    load_argv(gateway, body, connections, BEFORE_KILL_S + AFTER_KILL_S),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                for name, gateway in stack.gateways.items()
            }
            time.sleep(1.0 + BEFORE_KILL_S)  # the load's warm-up, then steady load
            killed_ns = time.perf_counter_ns()
            os.killpg(victim.pid, signal.SIGKILL)
            victim.stop()  # reaps it
            for name, proc in loads.items():
                stdout, stderr = proc.communicate(timeout=AFTER_KILL_S + DRAIN_S + 60)
                result = load_result(proc.returncode, stdout, stderr)
                out.append(
                    KillRound(
                        gateway=name, round=i + 1, answered=result.completed,
                        failed=result.errors,
                        first_error_ms=_since(killed_ns, result.first_error_ns),
                        last_error_ms=_since(killed_ns, result.last_error_ns),
                        by_kind=result.errors_by_kind, examples=result.error_examples,
                    )
                )  # fmt: skip
        with console.status(f"round {i + 1}: a new replica in place of {victim.name}"):
            stack.replicas[index] = stack.replica()
            wait_routed(stack)
    return out


def _since(start_ns: int, ns: int) -> float | None:
    """Milliseconds from ``start_ns`` to ``ns`` (None when ``ns`` is 0: it never happened)."""
    return (ns - start_ns) / 1e6 if ns else None


# -- 3. rollback ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One answer of a poller."""

    sent: float  # time.perf_counter()
    received: float
    status: int  # 0: no answer (connection error)
    version: str


class Poller(threading.Thread):
    """Asks one gateway for ``fraud@champion`` without pause, one request after another on
    one keep-alive connection, and keeps every answer's status and version."""

    def __init__(self, name: str, port: int, body: bytes) -> None:
        super().__init__(name=f"poll-{name}", daemon=True)
        self.gateway = name
        self.port = port
        self.body = body
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Poll until stopped."""
        headers = {"Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stopping.is_set():
            sent = time.perf_counter()
            try:
                conn.request("POST", CHAMPION_PATH, self.body, headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.samples.append(Sample(sent, time.perf_counter(), 0, repr(exc)[:80]))
                time.sleep(0.001)
                continue
            version = str(json.loads(data).get("model_version", "")) if status == 200 else ""
            self.samples.append(Sample(sent, time.perf_counter(), status, version))
        conn.close()

    def since(self, t0: float) -> list[Sample]:
        """The answers to requests sent at or after ``t0``."""
        samples = self.samples  # appended to in order of sending, by one thread
        return samples[bisect.bisect_left(samples, t0, key=_sent) :]


def _sent(sample: Sample) -> float:
    return sample.sent


def switched_at(samples: list[Sample], version: str) -> float | None:
    """When the answer came after which every answer is ``version`` (None: not yet)."""
    last_miss = -1
    for i, sample in enumerate(samples):
        if sample.status != 200 or sample.version != version:
            last_miss = i
    if last_miss + 1 >= len(samples):
        return None
    return samples[last_miss + 1].received


def wait_switched(pollers: list[Poller], version: str, t0: float, timeout_s: float = 60.0) -> None:
    """Until every poller has had only ``version`` for :data:`SETTLE_S` since ``t0``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        steady = True
        for poller in pollers:
            samples = poller.since(t0)
            at = switched_at(samples, version)
            if at is None or samples[-1].received - at < SETTLE_S:
                steady = False
        if steady:
            return
        time.sleep(0.05)
    seen = {p.gateway: [(s.status, s.version) for s in p.since(t0)[-3:]] for p in pollers}
    raise RuntimeError(f"the gateways do not all answer version {version}: {seen}")


@dataclass
class RollbackRound:
    """One rollback (champion 2 -> 1), timed from the command's start."""

    replicas: str  # "follow alias" or "fixed versions"
    round: int
    both_ms: float
    """From the command's start to the last of the two gateways answering version 1."""
    after_commit_ms: float
    """From the change being recorded in the registry to the same moment."""
    command_ms: float
    """How long the command ran (a Python process: start-up, the change, the event)."""
    gateways_ms: dict[str, float]
    """Per gateway, from the command's start to it answering version 1."""
    failed: int
    """Requests of the pollers that failed meanwhile."""
    polls: int


def measure_rollback(
    stack: Stack, replicas: str, rounds: int, console: Console
) -> list[RollbackRound]:
    """``rounds`` times: champion to 2 (the gateways answer 2), then ``aimesh models
    rollback fraud``, timed until both gateways answer 1."""
    pollers = [Poller(n, g.http_port, stack.model.json_body) for n, g in stack.gateways.items()]
    for poller in pollers:
        poller.start()
    out: list[RollbackRound] = []
    try:
        with console.status(f"rollback, replicas {replicas}: the gateways answer version 1"):
            wait_switched(pollers, "1", time.perf_counter())
        for i in range(rounds):
            with console.status(f"rollback, replicas {replicas}, round {i + 1}"):
                moved_at = time.perf_counter()
                aimesh(stack, "models", "alias", MODEL_NAME, ALIAS, "2")
                wait_switched(pollers, "2", moved_at)
                wall0, t0 = time.time(), time.perf_counter()
                said = aimesh(stack, "models", "rollback", MODEL_NAME)
                command_s = time.perf_counter() - t0
                if "-> version 1" not in said:
                    raise RuntimeError(f"the rollback did not go back to version 1: {said}")
                wait_switched(pollers, "1", t0)
                committed = t0 + (_champion_moved_at(stack.model.home) - wall0)
                switched = {p.gateway: switched_at(p.since(t0), "1") or t0 for p in pollers}
                last = max(switched.values())
                polled = [s for p in pollers for s in p.since(t0) if s.received <= last]
                out.append(
                    RollbackRound(
                        replicas=replicas, round=i + 1, both_ms=(last - t0) * 1e3,
                        after_commit_ms=(last - committed) * 1e3, command_ms=command_s * 1e3,
                        gateways_ms={k: (v - t0) * 1e3 for k, v in switched.items()},
                        failed=sum(1 for s in polled if s.status != 200), polls=len(polled),
                    )
                )  # fmt: skip
    finally:
        for poller in pollers:
            poller.stopping.set()
        for poller in pollers:
            poller.join(timeout=15)
    return out


def _champion_moved_at(home: Path) -> float:
    """When the registry recorded the alias's last move (a wall-clock timestamp)."""
    registry = LocalRegistry.from_settings(Settings(home=home))
    try:
        aliases = {a.name: a for a in registry.list_aliases(MODEL_NAME)}
    finally:
        registry.close()
    return aliases[ALIAS].updated_at.timestamp()


# -- the report -------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report_cost(console: Console, runs: list[CostRun]) -> dict[str, float]:
    """The cost table and verdict; the medians and ratios."""
    table = Table(
        title="1. Resilience layer on and off: wrk -c64 through a gateway to two replicas",
        caption=f"off: {OFF_LABEL}, for that gateway only. gw CPU: the gateway's CPU time per "
        "request; other CPU: cores used by other processes (noise).",
    )
    for column in ("round", "layer", "req/s", "p50 ms", "p99 ms", "gw CPU µs/req", "other CPU"):
        table.add_column(column, justify="right")
    table.add_column("non-2xx / socket errors", justify="right")
    for r in runs:
        table.add_row(
            str(r.round), r.gateway, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
            f"{r.gateway_cpu_us:.0f}", f"{r.other_cpu:.2f}",
            f"{r.non_2xx} / {r.socket_errors or '-'}",
        )  # fmt: skip
    console.print(table)

    def median(name: str, what: str) -> float:
        return _median([getattr(r, what) for r in runs if r.gateway == name])

    figures = {
        f"{what}_{name}": median(name, what)
        for what in ("rps", "p50_ms", "p99_ms", "gateway_cpu_us")
        for name in ("on", "off")
    }
    # Each round runs both gateways back to back: set against each other, they cancel what
    # drifts between rounds (the machine slowing, another process starting).
    rounds = sorted({r.round for r in runs})
    pairs = [
        (on, off)
        for i in rounds
        for on in runs
        for off in runs
        if on.round == off.round == i and (on.gateway, off.gateway) == ("on", "off")
    ]
    figures["rps_ratio_of_medians"] = figures["rps_on"] / figures["rps_off"]
    figures["rps_ratio"] = ratio = _median([on.rps / off.rps for on, off in pairs])
    figures["gateway_cpu_us_added"] = added = _median(
        [on.gateway_cpu_us - off.gateway_cpu_us for on, off in pairs]
    )
    met = ratio >= 1 - TARGET_LOSS
    console.print(
        f"layer on: [bold]{figures['rps_on']:,.0f}[/] req/s, p50 {figures['p50_ms_on']:.2f} ms, "
        f"p99 {figures['p99_ms_on']:.2f} ms; off: {figures['rps_off']:,.0f} "
        f"req/s, p50 {figures['p50_ms_off']:.2f} ms, p99 {figures['p99_ms_off']:.2f} ms "
        f"(medians of {len(pairs)} rounds)"
    )
    console.print(
        f"throughput on/off: [bold]{ratio:.3f}[/] (median of the rounds' ratios; the ratio of "
        f"the medians: {figures['rps_ratio_of_medians']:.3f}); target >= "
        f"{1 - TARGET_LOSS:.2f}: " + ("[green]met[/]" if met else "[red]not met[/]")
    )
    console.print(
        f"the gateway's CPU per request: {figures['gateway_cpu_us_on']:.0f} µs on, "
        f"{figures['gateway_cpu_us_off']:.0f} µs off; the layer adds [bold]{added:+.1f} µs[/] "
        "(median of the rounds' differences)"
    )
    return figures


def report_failover(console: Console, rounds: list[KillRound], connections: int) -> None:
    """The failover table, and per layer the totals and the median time to the last error."""
    table = Table(
        title=f"2. One of two replicas SIGKILLed under load ({connections} connections per "
        f"gateway, {BEFORE_KILL_S:g} s before the kill, {AFTER_KILL_S:g} s after)",
        caption=f"off: {OFF_LABEL}. ms: from the kill. answered: in the load's window (its "
        "first second left out); failed: all.",
    )
    for column in ("round", "layer", "answered", "failed", "first error ms", "last error ms"):
        table.add_column(column, justify="right")
    table.add_column("failed by kind")
    for r in rounds:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(r.by_kind.items())) or "-"
        table.add_row(
            str(r.round), r.gateway, f"{r.answered:,}", f"{r.failed:,}", _ms(r.first_error_ms),
            _ms(r.last_error_ms), kinds,
        )  # fmt: skip
    console.print(table)
    for name in dict.fromkeys(r.gateway for r in rounds):
        mine = [r for r in rounds if r.gateway == name]
        lasts = [r.last_error_ms for r in mine if r.last_error_ms is not None]
        last = f"{_median(lasts):,.0f} ms" if lasts else "none failed"
        console.print(
            f"layer {name}: [bold]{sum(r.failed for r in mine):,}[/] of "
            f"{sum(r.answered + r.failed for r in mine):,} requests failed in {len(mine)} "
            f"kill(s); from the kill to the last error: [bold]{last}[/] (median of the kills "
            f"that had errors: {len(lasts)})"
        )


def report_rollback(console: Console, rounds: list[RollbackRound]) -> None:
    """The rollback table."""
    table = Table(
        title="3. `aimesh models rollback fraud` (champion 2 -> 1) until both gateways answer "
        "version 1",
        caption="ms from the command's start, unless said; after commit: from the change "
        "recorded in the registry (inside the command) to both gateways answering 1.",
    )
    names = list(dict.fromkeys(k for r in rounds for k in r.gateways_ms))
    columns = ["replicas", "round", "both ms", "after commit ms", "command ran ms"]
    columns += [f"gateway {n} ms" for n in names] + ["failed / polls"]
    for column in columns:
        if column == "replicas":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for r in rounds:
        table.add_row(
            r.replicas, str(r.round), f"{r.both_ms:,.0f}", f"{r.after_commit_ms:,.0f}",
            f"{r.command_ms:,.0f}", *(f"{r.gateways_ms.get(n, float('nan')):,.0f}" for n in names),
            f"{r.failed} / {r.polls:,}",
        )  # fmt: skip
    console.print(table)
    for replicas in dict.fromkeys(r.replicas for r in rounds):
        mine = [r for r in rounds if r.replicas == replicas]
        console.print(
            f"replicas {replicas}: both gateways on version 1 "
            f"[bold]{_median([r.after_commit_ms for r in mine]):,.0f} ms[/] after the change "
            f"was recorded, {_median([r.both_ms for r in mine]):,.0f} ms after the command "
            f"started (medians of {len(mine)}; the command itself ran "
            f"{_median([r.command_ms for r in mine]):,.0f} ms)"
        )


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measurement")
    parser.add_argument(
        "--kill-connections", type=int, default=KILL_CONNECTIONS,
        help="connections of the load on each gateway while a replica is killed",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    console = Console()
    preamble(console)
    console.print(f"given to the gateway marked 'off' only: {OFF_LABEL}")
    with workdir(args.keep, "aimesh-bench-resilience-") as folder, contextlib.ExitStack() as exits:
        with console.status("training the fraud model; versions 1 and 2"):
            model = prepare("lr", folder)
            registry = LocalRegistry.from_settings(Settings(home=model.home))
            try:
                push_model(registry, MODEL_NAME, model.artifact)  # version 2
            finally:
                registry.close()
        (folder / "body.json").write_bytes(model.json_body)
        bus = exits.enter_context(EmbeddedNats(folder / "bus"))
        stack = Stack(model, bus.url, folder, exits)
        with console.status("starting two replicas and two gateways"):
            stack.replicas = [stack.replica(), stack.replica()]
            for name, settings in (("on", None), ("off", OFF)):
                gateway = gateway_server(
                    model.home, bus.url, model.json_body, folder, name=f"gateway-{name}",
                    settings=settings,
                )  # fmt: skip
                exits.callback(gateway.stop)
                gateway.start()
                stack.gateways[name] = gateway
            wait_routed(stack)
        cost = measure_cost(stack, args.rounds, args.duration, console)
        kills = measure_failover(stack, args.rounds, args.kill_connections, console)
        rollbacks = measure_rollback(stack, "follow alias", args.rounds, console)
        with console.status("replicas of fixed versions: fraud@1 and fraud@2"):
            for replica in stack.replicas:
                replica.stop()
            stack.replicas = [stack.replica("1"), stack.replica("2")]
        rollbacks += measure_rollback(stack, "fixed versions", args.rounds, console)

    figures = report_cost(console, cost)
    report_failover(console, kills, args.kill_connections)
    report_rollback(console, rollbacks)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "off_setting": OFF_LABEL,
                    "cost": {"medians": figures, "runs": [asdict(r) for r in cost]},
                    "failover": {
                        "connections": args.kill_connections,
                        "rounds": [asdict(r) for r in kills],
                    },
                    "rollback": [asdict(r) for r in rollbacks],
                }
            )
        )


if __name__ == "__main__":
    main()

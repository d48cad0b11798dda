"""Benchmark the job system against raw JetStream publish + ack, in the same run.

Both sides move N no-op messages through the ``AIMESH_JOBS`` work-queue stream of a fresh
bundled nats-server (JetStream on a temp folder), with the producer in this process and
the consumers in processes of their own (``--consumers``, 1 by default, the same number
on both sides), as submitters and workers run in a deployment:

- **raw JetStream**: publish N messages (waiting for each ack, C in flight) while durable
  pull consumers fetch up to K at a time and ack each;
- **aimesh jobs**: submit N ``noop`` jobs with :class:`aimesh.jobs.JobClient` (record in
  the KV bucket, message on the stream, C in flight) while aimesh workers (K at a time)
  run each one, write it succeeded and ack it.

Throughput is N over the time from the first publish to the last completion (the last
ack for raw, the last record written ``succeeded`` for jobs), once the producer has seen
the work queue drained. Rounds alternate raw and
jobs; the medians and their ratio are reported against the target (>= 0.5). Each round
also says where the CPU went, in microseconds per message: the bus (nats-server, read
from /proc on Linux), the producer and the consumer (each process's own CPU time).

    python bench/jobs.py                 # 3 rounds of 5,000 (about a minute)
    python bench/jobs.py --quick         # 1 round of 1,000
    python bench/jobs.py --consumers 2   # two consumers (workers) on each side
    python bench/jobs.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, Header

from aimesh.bus import JOBS_STREAM, Bus, EmbeddedNats, connect, declare_topology
from aimesh.config import JobsSettings
from aimesh.jobs import JobClient, JobSpec, Worker, get_handler

TARGET = 0.5
RAW_SUBJECT = "aimesh.jobs.bench-raw"
RAW_CONSUMER = "bench-raw"


@dataclass(frozen=True)
class Round:
    """One measurement."""

    system: str
    jobs: int
    seconds: float
    submit_seconds: float
    bus_cpu_s: float | None = None
    """CPU of the nats-server process over the round (None where /proc is not)."""
    producer_cpu_s: float = 0.0
    consumer_cpu_s: float = 0.0
    """CPU of the consumers, all together."""

    @property
    def per_second(self) -> float:
        """Messages (or jobs) per second, end to end."""
        return self.jobs / self.seconds

    def cpu_us(self) -> dict[str, float]:
        """Microseconds of CPU per message, by process."""
        spent = {
            "bus": self.bus_cpu_s,
            "producer": self.producer_cpu_s,
            "consumers": self.consumer_cpu_s,
        }
        return {name: 1e6 * s / self.jobs for name, s in spent.items() if s is not None}


def _bus_cpu(pid: int | None) -> float | None:
    """CPU seconds the nats-server process has used so far, or None off Linux."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the consumer side, in processes of its own -------------------------------------------


async def _raw_consumer(
    bus: Bus, batch: int, ready: Callable[[], None], stop: asyncio.Event
) -> tuple[int, float]:
    await bus.js.add_consumer(
        JOBS_STREAM,
        ConsumerConfig(
            durable_name=RAW_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            filter_subject=RAW_SUBJECT,
        ),
    )
    sub = await bus.js.pull_subscribe_bind(durable=RAW_CONSUMER, stream=JOBS_STREAM)
    ready()
    done, last = 0, 0.0
    while not stop.is_set():
        try:
            messages = await sub.fetch(batch, timeout=0.2)
        except TimeoutError:
            continue
        for msg in messages:
            await msg.ack()
            done += 1
        last = time.time()
    await bus.nc.flush()
    return done, last


async def _job_worker(
    bus: Bus, concurrency: int, ready: Callable[[], None], stop: asyncio.Event
) -> tuple[int, float]:
    worker = Worker(
        bus, "noop", get_handler("noop"), settings=JobsSettings(), concurrency=concurrency
    )
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()
    ready()
    done, last = 0, 0.0
    while not stop.is_set():
        if worker.stats.succeeded != done:
            done, last = worker.stats.succeeded, time.time()
        await asyncio.sleep(0.002)
    worker.stop()
    await running
    return worker.stats.succeeded, last


async def _consume(role: str, url: str, concurrency: int) -> dict[str, float]:
    """Consume until standard input ends: what was done, when it last was, the CPU spent.

    The CPU counts from when the consumer is ready (the producer waits for that).
    """
    stop = asyncio.Event()
    told = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    told.add_done_callback(lambda _: stop.set())
    started = 0.0

    def ready() -> None:
        nonlocal started
        started = time.process_time()
        print("ready", flush=True)

    async with await connect(url, timeout=10, name=f"bench-{role}") as bus:
        if role == "raw":
            done, last = await _raw_consumer(bus, concurrency, ready, stop)
        else:
            done, last = await _job_worker(bus, concurrency, ready, stop)
    return {"done": done, "last": last, "cpu": time.process_time() - started}


def _consumer_process(role: str, url: str, concurrency: int) -> None:
    said = asyncio.run(_consume(role, url, concurrency))
    print(json.dumps(said), flush=True)


# -- the producer side, here --------------------------------------------------------------


def _start_consumer(role: str, url: str, concurrency: int) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--role", role, "--url", url]
    argv += ["--worker-concurrency", str(concurrency)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"the {role} consumer did not start (said {line!r})")
    return proc


def _finish_consumer(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(input="", timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the consumer failed with exit code {proc.returncode}")
    said: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return said


async def _drained(bus: Bus) -> None:
    """Return once the work queue is empty: every message acknowledged."""
    while (await bus.js.stream_info(JOBS_STREAM)).state.messages:
        await asyncio.sleep(0.005)


async def _in_flight(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> None:
    next_index = iter(range(n))

    async def lane() -> None:
        for index in next_index:
            await one(index)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def _produce(system: str, bus: Bus, client: JobClient, n: int, concurrency: int) -> float:
    if system == "raw":

        async def one(index: int) -> object:
            headers = {Header.MSG_ID.value: f"{time.time_ns()}-{index}"}
            return await bus.js.publish(RAW_SUBJECT, b"{}", headers=headers)

    else:

        async def one(index: int) -> object:
            return await client.submit(JobSpec(kind="noop"))

    await _in_flight(n, concurrency, one)
    return time.time()


async def _round(system: str, url: str, bus_pid: int | None, args: argparse.Namespace) -> Round:
    procs = [_start_consumer(system, url, args.worker_concurrency) for _ in range(args.consumers)]
    try:
        async with await connect(url, timeout=10, name="bench-producer") as bus:
            client = await JobClient.open(bus, JobsSettings())
            try:
                bus_cpu, cpu = _bus_cpu(bus_pid), time.process_time()
                first = time.time()
                submitted = await _produce(system, bus, client, args.jobs, args.concurrency)
                producer_cpu = time.process_time() - cpu
                await asyncio.wait_for(_drained(bus), 300)
            finally:
                await client.close()
        said = await asyncio.gather(*(asyncio.to_thread(_finish_consumer, p) for p in procs))
        bus_after = _bus_cpu(bus_pid)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = sum(int(s["done"]) for s in said)
    if done != args.jobs:
        raise RuntimeError(f"{system}: {done} of {args.jobs} completed")
    return Round(
        system,
        args.jobs,
        max(s["last"] for s in said) - first,
        submitted - first,
        bus_cpu_s=_spent(bus_cpu, bus_after),
        producer_cpu_s=producer_cpu,
        consumer_cpu_s=sum(s["cpu"] for s in said),
    )


def _spent(before: float | None, after: float | None) -> float | None:
    """CPU seconds between two readings, when both could be taken."""
    return None if before is None or after is None else after - before


async def _run(url: str, bus_pid: int | None, args: argparse.Namespace) -> list[Round]:
    async with await connect(url, timeout=10, name="bench-setup") as bus:
        await declare_topology(bus)
    rounds: list[Round] = []
    for index in range(args.rounds):
        for system in ("raw", "jobs"):
            result = await _round(system, url, bus_pid, args)
            rounds.append(result)
            cpu = ", ".join(f"{name} {us:.0f}" for name, us in result.cpu_us().items())
            print(
                f"round {index + 1} {system:4}: {result.per_second:8.0f}/s "
                f"({result.jobs} in {result.seconds:.2f}s; submitted in "
                f"{result.submit_seconds:.2f}s; CPU µs per message: {cpu})",
                flush=True,
            )
    return rounds


def _report(rounds: list[Round], args: argparse.Namespace) -> dict[str, object]:
    raw = statistics.median(r.per_second for r in rounds if r.system == "raw")
    jobs = statistics.median(r.per_second for r in rounds if r.system == "jobs")
    ratio = jobs / raw
    verdict = "met" if ratio >= TARGET else "NOT met"
    print()
    print(f"raw JetStream publish+ack : {raw:8.0f} msgs/s (median of {args.rounds})")
    print(f"aimesh no-op jobs         : {jobs:8.0f} jobs/s (median of {args.rounds})")
    print(f"ratio                     : {ratio:8.2f}  (target >= {TARGET}: {verdict})")
    cpu: dict[str, dict[str, float]] = {}
    for system in ("raw", "jobs"):
        spent = [r.cpu_us() for r in rounds if r.system == system]
        cpu[system] = {name: statistics.median(s[name] for s in spent) for name in spent[0]}
        line = ", ".join(f"{name} {us:.0f}" for name, us in cpu[system].items())
        print(f"CPU µs per message, {system:4}: {line} (medians)")
    return {
        "raw_per_s": raw,
        "jobs_per_s": jobs,
        "ratio": ratio,
        "cpu_us_per_message": cpu,
        "target": TARGET,
        "met": ratio >= TARGET,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "worker_concurrency": args.worker_concurrency,
        "consumers": args.consumers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rounds": [asdict(r) | {"per_second": r.per_second} for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python bench/jobs.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=5000, metavar="N", help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256, help="submissions in flight")
    parser.add_argument(
        "--worker-concurrency", type=int, default=64, help="jobs a worker runs at once"
    )
    parser.add_argument("--quick", action="store_true", help="one round of 1,000")
    parser.add_argument(
        "--consumers",
        type=int,
        default=1,
        metavar="K",
        help="consumer processes on each side (raw consumers, aimesh workers)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the target is met")
    parser.add_argument("--role", choices=["raw", "jobs"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        _consumer_process(args.role, args.url, args.worker_concurrency)
        return
    if args.quick:
        args.jobs, args.rounds = 1000, 1
    print(
        f"{args.jobs} no-op messages per round, {args.concurrency} submissions in flight, "
        f"{args.consumers} consumer process(es) a side, worker concurrency "
        f"{args.worker_concurrency}, {os.cpu_count()} CPUs",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="aimesh-bench-jobs-") as folder,
        EmbeddedNats(Path(folder), start_timeout=30) as server,
    ):
        rounds = asyncio.run(_run(server.url, server.pid, args))
    figures = _report(rounds, args)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.check and not figures["met"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

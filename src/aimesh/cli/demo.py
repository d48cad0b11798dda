"""``aimesh demo`` (what ``make run`` runs): the platform end to end on the embedded defaults.

Starts the embedded bus; ingests synthetic fraud data into the lake as ``transactions``;
trains ``fraud`` through a training job that a worker runs (a pinned lake snapshot in, a
registered version with metrics and lineage out) and aliases it ``champion`` (the alias
event arrives on the bus); runs the stack of ``HOME/demo/aimesh.yaml`` with ``aimesh up``
(registry, lake, jobs, two replicas of ``fraud@champion``, an inference and a training
worker, the gateway); predicts through the gateway over REST, gRPC and as an async job;
and keeps the stack running until Ctrl-C (``--once`` stops after the predictions).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from rich.table import Table

from aimesh.cli._app import console, handle_errors, settings
from aimesh.config import Settings
from aimesh.errors import AimeshError

DATASET = "transactions"
STACK_STOP_S = 120.0
"""How long the demo waits for its stack's supervisor to stop before killing it."""
DEMO_STOP_S = STACK_STOP_S + 30
"""After a signal, the demo is gone within this, stopped in order or by its watchdog."""
TRAINER = "sklearn:HistGradientBoostingClassifier"


def _port(preferred: int) -> int:
    """``preferred`` if it is free, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _first_alias_event(
    config: Settings, model: str, timeout: float, ready: asyncio.Event
) -> str:
    """The first alias move of ``model`` seen on the bus, described in one line."""
    from aimesh.bus import declare_topology, open_bus, subscribe_events

    async with await open_bus(config, name="aimesh-demo", timeout=2.0) as bus:
        await declare_topology(bus)
        subject = f"aimesh.events.registry.alias.moved.{model}"
        async with await subscribe_events(bus, subject) as events:
            ready.set()
            async with asyncio.timeout(timeout):
                async for event in events:
                    moved = f"{event.model}@{event.alias} -> {event.version}"
                    return f"{event.kind} {event.action}: {moved}"
    return "no event"


def _ingest(config: Settings, rows: int) -> tuple[str, str]:
    """The synthetic fraud data as the lake dataset ``transactions`` (once per home).

    Returns the pinned reference (``transactions@N``) and a line saying what happened.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from aimesh.examples import make_fraud_dataset
    from aimesh.lake import open_lake

    lake = open_lake(config)
    existing = {d.name: d for d in lake.list_datasets()}.get(DATASET)
    if existing is not None:
        pinned = str(lake.pin(DATASET))
        return pinned, f"{pinned} is in the lake already ({existing.rows} rows)"
    x, y = make_fraud_dataset(rows)
    csv = config.home_dir / "demo" / f"{DATASET}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    columns = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    pacsv.write_csv(pa.table({**columns, "label": y}), csv)
    with Progress(
        TextColumn("ingesting {task.description}"), BarColumn(), DownloadColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(csv.name, total=csv.stat().st_size)
        result = lake.ingest(
            DATASET, [csv], on_progress=lambda done, total: bar.update(task, completed=done)
        )
    ref = f"{DATASET}@{result.version}"
    frauds = int(y.sum())
    return ref, f"ingested {result.rows} rows ({frauds} frauds) from {csv.name} as {ref}"


async def _train_on_a_worker(
    config: Settings, dataset: str, publish: Callable[[], object]
) -> tuple[dict[str, Any], float, str]:
    """Train ``fraud`` through a training job run by a worker; alias it champion.

    Returns the job's result, how long the job took, and the alias event seen on the bus.
    """
    from aimesh.bus import declare_topology, open_bus
    from aimesh.jobs import JobClient, JobSpec, Worker, get_handler
    from aimesh.training import TrainRequest

    request = TrainRequest(
        model="fraud",
        dataset=dataset,
        trainer=TRAINER,
        target="label",
        params={"max_iter": 100},
        alias="champion",
    )
    ready = asyncio.Event()
    watcher = asyncio.create_task(_first_alias_event(config, "fraud", 600.0, ready))
    await ready.wait()
    async with await open_bus(config, name="aimesh-demo-training", timeout=5.0) as bus:
        await declare_topology(bus)
        jobs = await JobClient.open(bus, config.jobs, declare=False)
        worker = Worker(bus, "training", get_handler("training"), settings=config.jobs)
        running = asyncio.create_task(worker.run())
        try:
            started = time.perf_counter()
            job = await jobs.submit(JobSpec(kind="training", payload=request.payload()))
            done = await jobs.wait(job.id, timeout=600)
            took = time.perf_counter() - started
        finally:
            worker.stop()
            await running
            await jobs.close()
    await asyncio.to_thread(publish)  # the worker wrote the registry here: publish its events
    result: dict[str, Any] = done.result
    return result, took, await watcher


def _infer_body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP64",
                "data": x.ravel().tolist(),
            }
        ]
    }


def _fraud_probability(answer: dict[str, Any], rows: int) -> np.ndarray:
    outputs = {o["name"]: o for o in answer["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(rows, -1)
    return probabilities[:, 1]


def _predict_async(url: str, x: np.ndarray, key: str) -> tuple[str, float, np.ndarray]:
    """One async call through the gateway: 202 and a job id, then its result once done."""
    started = time.perf_counter()
    client = httpx.Client(headers={"x-api-key": key}, timeout=10)
    accepted = client.post(
        f"{url}/v2/models/fraud/infer", params={"async": "true"}, json=_infer_body(x)
    )
    if accepted.status_code != 202:
        raise AimeshError(f"async inference answered {accepted.status_code}: {accepted.text}")
    job_id = accepted.json()["id"]
    deadline = time.monotonic() + 60
    while (job := client.get(f"{url}/api/jobs/{job_id}").json())["state"] in (
        "queued",
        "running",
    ):
        if time.monotonic() > deadline:
            raise AimeshError(f"async job {job_id} still {job['state']} after 60 s")
        time.sleep(0.02)
    if job["state"] != "succeeded":
        raise AimeshError(f"async job {job_id} {job['state']}: {job.get('error')}")
    answer = client.get(f"{url}/api/jobs/{job_id}/result").json()
    client.close()
    return job_id, time.perf_counter() - started, _fraud_probability(answer, x.shape[0])


def _predict_rest(url: str, x: np.ndarray, key: str) -> tuple[str, np.ndarray]:
    answer = httpx.post(
        f"{url}/v2/models/fraud/infer", json=_infer_body(x), headers={"x-api-key": key}, timeout=10
    ).json()
    return answer["model_version"], _fraud_probability(answer, x.shape[0])


def _predict_grpc(address: str, x: np.ndarray, key: str) -> tuple[str, np.ndarray]:
    import grpc

    from aimesh.protocol import InferenceRequest, Tensor
    from aimesh.protocol import grpc as pb

    request = InferenceRequest(inputs=[Tensor("input-0", "FP64", x)])
    with grpc.insecure_channel(address) as channel:
        stub = pb.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(
            pb.request_to_pb(request, model_name="fraud"),
            timeout=10,
            metadata=(("x-api-key", key),),
        )
    response = pb.response_from_pb(reply)
    outputs = {t.name: t.data for t in response.outputs}
    return response.model_version or "?", outputs["probabilities"][:, 1]


def _interrupt() -> None:
    """The first SIGINT or SIGTERM: unwind whatever the demo does, to its stack's stop."""
    raise KeyboardInterrupt


def _until_a_signal() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


DEMO_PROJECT = """\
# Written by `aimesh demo` (make run): the fraud model as a stack.
home: {home}
services:
  registry: true
  lake: true                # /api/lake through the gateway
  jobs: true                # /api/jobs through the gateway
  gateway: true
  models:
    - ref: fraud@champion   # follows the alias
      replicas: 2           # two processes, each on its own ports
  workers:
    - kind: inference       # runs ?async=true calls
      concurrency: 8
    - kind: training        # runs `aimesh train` jobs
registry:
  port: {registry_port}
lake:
  port: {lake_port}
jobs:
  port: {jobs_port}
gateway:
  port: {gateway_port}
  grpc_port: {gateway_grpc_port}
serving:
  drain_timeout_s: 10
"""


def _write_project(config: Settings) -> Path:
    """The demo's project file in the home, on the usual ports where they are free."""
    path = config.home_dir / "demo" / "aimesh.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        DEMO_PROJECT.format(
            home=config.home_dir,
            registry_port=_port(config.registry.port),
            lake_port=_port(config.lake.port),
            jobs_port=_port(config.jobs.port),
            gateway_port=_port(config.gateway.port),
            gateway_grpc_port=_port(config.gateway.grpc_port),
        )
    )
    return path


app = typer.Typer(help="Walk-throughs of the platform on the embedded defaults.")


@app.callback(invoke_without_command=True)
@handle_errors
def demo(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(help="Rows of synthetic fraud data to train on.")] = 20_000,
    once: Annotated[
        bool, typer.Option("--once", help="Stop the stack after the predictions.")
    ] = False,
) -> None:
    """The platform end to end: lake, a training job, the stack, sync and async predictions.

    Ingests synthetic fraud data into the lake, trains fraud on a worker through a training
    job and aliases it champion, runs the stack (registry, lake, jobs, 2 replicas, workers,
    gateway), predicts through the gateway over REST, gRPC and async REST.
    `aimesh demo rollout`: canaries decided by the controller on their own.
    """
    if ctx.invoked_subcommand is not None:
        return
    from aimesh.bus import ensure_bus, redact_url
    from aimesh.cli.local import show_stack
    from aimesh.cli.models import versions_table
    from aimesh.config import load_settings
    from aimesh.examples import make_fraud_dataset
    from aimesh.local import STAGES, stack_report, start_detached, stop_stack
    from aimesh.observability import stop_on_signals
    from aimesh.registry import LocalRegistry, service_credential
    from aimesh.registry.outbox import flush_outbox

    config = settings()
    # One way to stop, in every phase: the first signal unwinds to the stack's stop below
    # (bounded by the watchdog, whatever the bus or the stack do); the second exits at once.
    stop_on_signals(_interrupt, what="the demo", grace_s=DEMO_STOP_S)
    bus_url = ensure_bus(config)
    console.print(
        f"[bold]bus[/bold]       {redact_url(bus_url)}  (embedded; stop it with `aimesh bus stop`)"
    )

    dataset, said = _ingest(config, rows)
    console.print(f"[bold]lake[/bold]      {said}")

    registry = LocalRegistry.from_settings(config, actor="demo")
    try:
        with console.status(f"training fraud on {dataset} ({TRAINER}) with a training job"):
            result, took, event = asyncio.run(
                _train_on_a_worker(config, dataset, lambda: flush_outbox(registry.store, config))
            )
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result["metrics"].items()))
        console.print(
            f"[bold]trained[/bold]   fraud@{result['version']} by a training job on a worker "
            f"in {took:.1f} s: {scores}"
        )
        console.print(f"[bold]event[/bold]     {event}")
        console.print(versions_table(registry.list_versions("fraud")))
    finally:
        registry.close()

    project = _write_project(config)
    stack = load_settings(project)
    home = stack.home_dir
    try:
        with console.status(
            "starting the stack: registry, lake, jobs, 2 replicas of fraud@champion, workers, "
            "gateway"
        ):
            state = start_detached(
                home, ["up", "--file", str(project)], timeout_s=60.0 * len(STAGES) + 60
            )
        show_stack(asyncio.run(stack_report(home, settings=stack)))
        # Where the gateway really listens (a port of 0 in the settings means any free one).
        front = next(p for p in state.processes if p.kind == "gateway")
        gateway = front.rest_url
        grpc_address = front.grpc_address or ""
        x, y = make_fraud_dataset(rows)
        sample = np.concatenate([x[y == 1][:3], x[y == 0][:3]])
        # The home's service credential: accepted whether or not keys were made.
        key = service_credential(stack)
        rest_version, rest_p = _predict_rest(gateway, sample, key)
        grpc_version, grpc_p = _predict_grpc(grpc_address, sample, key)
        job_id, async_s, async_p = _predict_async(gateway, sample, key)
        table = Table(
            "row", "true label", "p(fraud) REST", "p(fraud) gRPC", "p(fraud) async",
            "version REST / gRPC", title="predictions through the gateway",
        )  # fmt: skip
        for i, label in enumerate([1, 1, 1, 0, 0, 0]):
            table.add_row(
                str(i), str(label), f"{rest_p[i]:.4f}", f"{grpc_p[i]:.4f}", f"{async_p[i]:.4f}",
                f"{rest_version} / {grpc_version}",
            )  # fmt: skip
        console.print(table)
        console.print(
            f"[bold]async[/bold]     POST {gateway}/v2/models/fraud/infer?async=true -> 202, "
            f"job {job_id}, result in {async_s * 1000:.0f} ms at {gateway}/api/jobs/{job_id}/result"
        )
        console.print(f"[bold]gateway[/bold]   REST {gateway}/v2/models/fraud/infer")
        console.print(
            f"[bold]gateway[/bold]   gRPC {grpc_address} (inference.GRPCInferenceService)"
        )
        console.print(f"[bold]lake[/bold]      {gateway}/api/lake/datasets  (`aimesh lake list`)")
        console.print(f"[bold]jobs[/bold]      {gateway}/api/jobs  (`aimesh jobs list`)")
        console.print(f"[bold]docs[/bold]      {gateway}/docs  (OpenAPI: {gateway}/openapi.json)")
        console.print(f"[bold]metrics[/bold]   {gateway}/metrics")
        if once:
            return
        console.print(
            "the stack runs; try `aimesh status`, `aimesh logs fraud -f`, "
            f"`aimesh train fraud --dataset {dataset} --trainer sklearn:LogisticRegression "
            "--target label --wait`, or `aimesh models alias fraud champion N` in another "
            "terminal. Ctrl-C stops it."
        )
        _until_a_signal()
    finally:
        with console.status("stopping the stack"):
            stop_stack(home, timeout_s=STACK_STOP_S, settings=stack)
        console.print("stopped the stack (the bus keeps running: `aimesh bus stop`)")


def _rollout_demo() -> None:
    from aimesh.cli.demo_rollout import rollout

    app.command("rollout")(rollout)


_rollout_demo()

"""``aimesh demo`` (what ``make run`` runs): the platform end to end on the embedded defaults.

Starts the embedded bus, trains the synthetic fraud model, pushes it as ``fraud@champion``
(the alias event arrives on the bus), runs the stack of ``HOME/demo/aimesh.yaml`` with
``aimesh up`` (the registry, two replicas of ``fraud@champion``, the gateway), sends
predictions through the gateway over REST and gRPC, prints them, and keeps the stack
running until Ctrl-C (``--once`` stops after the predictions).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
from rich.table import Table

from aimesh.cli._app import console, handle_errors, settings
from aimesh.config import Settings
from aimesh.registry import Registry


def _port(preferred: int) -> int:
    """``preferred`` if it is free, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _first_alias_event(url: str, model: str, timeout: float, ready: asyncio.Event) -> str:
    """The first alias move of ``model`` seen on the bus, described in one line."""
    from aimesh.bus import connect, declare_topology, subscribe_events

    async with await connect(url, timeout=2.0, name="aimesh-demo") as bus:
        await declare_topology(bus)
        subject = f"aimesh.events.registry.alias.moved.{model}"
        async with await subscribe_events(bus, subject) as events:
            ready.set()
            async with asyncio.timeout(timeout):
                async for event in events:
                    moved = f"{event.model}@{event.alias} -> {event.version}"
                    return f"{event.kind} {event.action}: {moved}"
    return "no event"


async def _push_and_watch(
    bus_url: str,
    client: Registry,
    artifact: Path,
    metrics: dict[str, float],
    rows: int,
    *,
    publish: Callable[[], object] | None = None,
) -> str:
    """Push the model as fraud@champion while watching the bus for the alias event."""
    from aimesh.examples import FRAUD_SEED
    from aimesh.registry import Lineage, push_model

    ready = asyncio.Event()
    watcher = asyncio.create_task(_first_alias_event(bus_url, "fraud", 10.0, ready))
    await ready.wait()
    version = await asyncio.to_thread(
        push_model,
        client,
        "fraud",
        artifact,
        aliases=["champion"],
        description="logistic regression on synthetic fraud data",
        metrics=metrics,
        lineage=Lineage(
            dataset=f"synthetic-fraud(rows={rows},seed={FRAUD_SEED})",
            trainer="sklearn:StandardScaler+LogisticRegression",
            params={"max_iter": 1000},
        ),
    )
    console.print(f"[bold]pushed[/bold]    {version.ref} as fraud@champion")
    if publish is not None:  # a local registry: publish its recorded events now
        await asyncio.to_thread(publish)
    return await watcher


def _predict_rest(url: str, x: np.ndarray) -> tuple[str, np.ndarray]:
    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP64",
                "data": x.ravel().tolist(),
            }
        ]
    }
    answer = httpx.post(f"{url}/v2/models/fraud/infer", json=body, timeout=10).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(x.shape[0], -1)
    return answer["model_version"], probabilities[:, 1]


def _predict_grpc(address: str, x: np.ndarray) -> tuple[str, np.ndarray]:
    import grpc

    from aimesh.protocol import InferenceRequest, Tensor
    from aimesh.protocol import grpc as pb

    request = InferenceRequest(inputs=[Tensor("input-0", "FP64", x)])
    with grpc.insecure_channel(address) as channel:
        stub = pb.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(pb.request_to_pb(request, model_name="fraud"), timeout=10)
    response = pb.response_from_pb(reply)
    outputs = {t.name: t.data for t in response.outputs}
    return response.model_version or "?", outputs["probabilities"][:, 1]


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


DEMO_PROJECT = """\
# Written by `aimesh demo` (make run): the fraud model as a stack.
home: {home}
services:
  registry: true
  gateway: true
  models:
    - ref: fraud@champion   # follows the alias
      replicas: 2           # two processes, each on its own ports
registry:
  port: {registry_port}
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
            gateway_port=_port(config.gateway.port),
            gateway_grpc_port=_port(config.gateway.grpc_port),
        )
    )
    return path


@handle_errors
def demo(
    rows: Annotated[int, typer.Option(help="Rows of synthetic fraud data to train on.")] = 20_000,
    once: Annotated[
        bool, typer.Option("--once", help="Stop the stack after the predictions.")
    ] = False,
) -> None:
    """Train the fraud model, run the stack (registry, 2 replicas, gateway), predict through it."""
    import skops.io as sio

    from aimesh.bus import ensure_bus
    from aimesh.cli.local import show_stack
    from aimesh.cli.models import versions_table
    from aimesh.config import load_settings
    from aimesh.examples import make_fraud_dataset, train_fraud_model
    from aimesh.local import STAGES, stack_report, start_detached, stop_stack
    from aimesh.registry import LocalRegistry
    from aimesh.registry.outbox import flush_outbox

    config = settings()
    bus_url = ensure_bus(config)
    console.print(f"[bold]bus[/bold]       {bus_url}  (embedded; stop it with `aimesh bus stop`)")

    with console.status("training the fraud model on synthetic data"):
        x, y = make_fraud_dataset(rows)
        model, metrics = train_fraud_model(x, y)
        artifact = config.home_dir / "demo" / "fraud.skops"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        sio.dump(model, artifact)
    console.print(
        f"[bold]trained[/bold]   {rows} rows, {int(y.sum())} frauds: "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    )

    registry = LocalRegistry.from_settings(config, actor="demo")
    try:
        event = asyncio.run(
            _push_and_watch(
                bus_url, registry, artifact, metrics, rows,
                publish=lambda: flush_outbox(registry.store, config),
            )
        )  # fmt: skip
        console.print(f"[bold]event[/bold]     {event}")
        console.print(versions_table(registry.list_versions("fraud")))
    finally:
        registry.close()

    project = _write_project(config)
    stack = load_settings(project)
    home = stack.home_dir
    with console.status("starting the stack: registry, 2 replicas of fraud@champion, gateway"):
        state = start_detached(
            home, ["up", "--file", str(project)], timeout_s=60.0 * len(STAGES) + 60
        )
    try:
        show_stack(asyncio.run(stack_report(home)))
        # Where the gateway really listens (a port of 0 in the settings means any free one).
        front = next(p for p in state.processes if p.kind == "gateway")
        gateway = front.rest_url
        grpc_address = front.grpc_address or ""
        sample = np.concatenate([x[y == 1][:3], x[y == 0][:3]])
        rest_version, rest_p = _predict_rest(gateway, sample)
        grpc_version, grpc_p = _predict_grpc(grpc_address, sample)
        table = Table(
            "row", "true label", "p(fraud) REST", "p(fraud) gRPC", "version",
            title="predictions through the gateway",
        )  # fmt: skip
        for i, label in enumerate([1, 1, 1, 0, 0, 0]):
            table.add_row(
                str(i), str(label), f"{rest_p[i]:.4f}", f"{grpc_p[i]:.4f}",
                f"{rest_version} / {grpc_version}",
            )  # fmt: skip
        console.print(table)
        console.print(f"[bold]gateway[/bold]   REST {gateway}/v2/models/fraud/infer")
        console.print(
            f"[bold]gateway[/bold]   gRPC {grpc_address} (inference.GRPCInferenceService)"
        )
        console.print(f"[bold]docs[/bold]      {gateway}/docs  (OpenAPI: {gateway}/openapi.json)")
        console.print(f"[bold]metrics[/bold]   {gateway}/metrics")
        if once:
            return
        console.print(
            "the stack runs; try `aimesh status`, `aimesh logs fraud -f`, or "
            "`aimesh models alias fraud champion N` in another terminal. Ctrl-C stops it."
        )
        _wait_for_ctrl_c()
    finally:
        with console.status("stopping the stack"):
            stop_stack(home, timeout_s=30.0 * len(STAGES) + 10)
        console.print("stopped the stack (the bus keeps running: `aimesh bus stop`)")

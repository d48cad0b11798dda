"""``aimesh demo`` (what ``make run`` runs): the platform end to end on the embedded defaults.

Starts the embedded bus and the registry service, trains the synthetic fraud model, pushes
it through the registry's REST API as ``fraud@champion`` (the alias event arrives on the
bus), starts a model service for ``fraud@champion``, sends predictions over REST and gRPC,
prints them, and keeps serving until Ctrl-C (``--once`` stops after the predictions).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
from rich.table import Table

from aimesh.cli._app import console, handle_errors, settings
from aimesh.config import Settings
from aimesh.errors import Unavailable
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


@contextmanager
def child_service(
    config: Settings, name: str, args: list[str], ready_url: str, *, timeout: float = 60.0
) -> Iterator[None]:
    """Run ``aimesh ARGS`` as a child process until it answers ``ready_url``; stop it after."""
    log_path = config.home_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AIMESH_HOME": str(config.home_dir)}
    env.pop("AIMESH_REGISTRY__URL", None)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aimesh", *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise Unavailable(f"{name} exited early; see {log_path}")
            try:
                if httpx.get(ready_url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"{name} did not become ready; see {log_path}")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    bus_url: str, client: Registry, artifact: Path, metrics: dict[str, float], rows: int
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


@handle_errors
def demo(
    rows: Annotated[int, typer.Option(help="Rows of synthetic fraud data to train on.")] = 20_000,
    once: Annotated[
        bool, typer.Option("--once", help="Stop after the predictions instead of serving on.")
    ] = False,
) -> None:
    """Start the bus, the registry and a model service; train, push and query fraud@champion."""
    import skops.io as sio

    from aimesh.bus import ensure_bus
    from aimesh.cli.models import versions_table
    from aimesh.examples import make_fraud_dataset, train_fraud_model
    from aimesh.registry.client import RegistryClient

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

    with ExitStack() as services:
        registry_port = _port(config.registry.port)
        registry_url = f"http://127.0.0.1:{registry_port}"
        services.enter_context(
            child_service(
                config,
                "registry",
                ["registry", "serve", "--port", str(registry_port)],
                f"{registry_url}/health",
            )
        )
        console.print(f"[bold]registry[/bold]  {registry_url}  (docs: {registry_url}/docs)")
        client = RegistryClient(
            registry_url, timeout=config.registry.request_timeout_s, cache_dir=config.cache_dir
        )
        event = asyncio.run(_push_and_watch(bus_url, client, artifact, metrics, rows))
        console.print(f"[bold]event[/bold]     {event}")
        console.print(versions_table(client.list_versions("fraud")))
        client.close()

        http_port, grpc_port = _port(config.serving.http_port), _port(config.serving.grpc_port)
        model_url = f"http://127.0.0.1:{http_port}"
        serve_args = ["serve", "fraud@champion", "--http-port", str(http_port)]
        serve_args += ["--grpc-port", str(grpc_port)]
        services.enter_context(
            child_service(config, "serve-fraud", serve_args, f"{model_url}/v2/health/ready")
        )
        sample = np.concatenate([x[y == 1][:3], x[y == 0][:3]])
        truth = [1, 1, 1, 0, 0, 0]
        rest_version, rest_p = _predict_rest(model_url, sample)
        grpc_version, grpc_p = _predict_grpc(f"127.0.0.1:{grpc_port}", sample)
        table = Table(
            "row", "true label", "p(fraud) REST", "p(fraud) gRPC", "version", title="predictions"
        )
        for i, label in enumerate(truth):
            table.add_row(
                str(i), str(label), f"{rest_p[i]:.4f}", f"{grpc_p[i]:.4f}",
                f"{rest_version} / {grpc_version}",
            )  # fmt: skip
        console.print(table)
        console.print(
            f"[bold]model[/bold]     REST {model_url}/v2/models/fraud  (docs: {model_url}/docs)"
        )
        console.print(
            f"[bold]model[/bold]     gRPC 127.0.0.1:{grpc_port}  (inference.GRPCInferenceService)"
        )
        console.print(f"[bold]metrics[/bold]   {model_url}/metrics")
        if once:
            return
        console.print(
            "serving fraud@champion; try `aimesh models alias fraud champion N` in another "
            "terminal. Ctrl-C stops."
        )
        _wait_for_ctrl_c()
        console.print("stopping")

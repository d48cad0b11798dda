"""``aimesh demo`` (what ``make run`` runs): the platform end to end on the embedded defaults.

Starts the embedded bus and the registry service, trains the synthetic fraud model, pushes
it through the registry's REST API as ``fraud@champion``, shows the event that arrived on
the bus, and prints the versions. Later capabilities extend it into the whole stack.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import typer

from aimesh.cli._app import console, handle_errors, settings
from aimesh.config import Settings
from aimesh.errors import StoreUnavailable
from aimesh.registry import Registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def registry_service(config: Settings, *, timeout: float = 30.0) -> Iterator[str]:
    """Run ``aimesh registry serve`` as a child process on a free port; yield its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = config.home_dir / "logs" / "registry.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AIMESH_HOME": str(config.home_dir)}
    env.pop("AIMESH_REGISTRY__URL", None)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aimesh", "registry", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise StoreUnavailable(f"the registry service exited early; see {log_path}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"the registry service did not start; see {log_path}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
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


@handle_errors
def demo(
    rows: Annotated[int, typer.Option(help="Rows of synthetic fraud data to train on.")] = 20_000,
) -> None:
    """Start the bus and the registry, train the fraud model, push it as fraud@champion."""
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

    with registry_service(config) as registry_url:
        console.print(f"[bold]registry[/bold]  {registry_url}  (docs: {registry_url}/docs)")
        client = RegistryClient(
            registry_url, timeout=config.registry.request_timeout_s, cache_dir=config.cache_dir
        )
        event = asyncio.run(_push_and_watch(bus_url, client, artifact, metrics, rows))
        console.print(f"[bold]event[/bold]     {event}")
        console.print(versions_table(client.list_versions("fraud")))
        client.close()


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

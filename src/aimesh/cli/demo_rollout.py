"""``aimesh demo rollout``: canaries on a stack of their own, decided by the controller.

In a home of its own (``HOME/demo-rollout/home``, with its own embedded bus, stopped at the
end), it registers three
versions of ``fraud``: 1, the champion; 2, a model that fails every call (a corrupt
build: its intercept is text); 3, a good retrain. It runs a stack (registry, the
three versions, the rollout controller, the gateway), sends steady traffic through the
gateway, and starts two canaries as ``aimesh rollout start`` would: version 2, rolled back
by the controller on its first errors, and version 3, promoted step by step. Each decision
is printed with the figures that drove it; the stack stops at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer
from rich.table import Table

from aimesh.cli._app import console, handle_errors, settings
from aimesh.config import Settings

PROJECT = """\
# Written by `aimesh demo rollout`: three versions of fraud, the controller, the gateway.
home: {home}
services:
  registry: true
  lake: false
  jobs: false
  controller: true
  gateway: true
  workers: []
  models:
    - ref: fraud@champion   # follows the alias: version 1, then the promoted one
    - ref: fraud@2          # the broken build
    - ref: fraud@3          # the good retrain
registry:
  port: 0
gateway:
  port: 0
  grpc_port: 0
serving:
  drain_timeout_s: 5
"""
_DECIDED_S = 120.0  # the longest a canary may take to be decided in the demo


def _versions(config: Settings, folder: Path) -> None:
    """fraud 1 (champion), 2 (fails every call), 3 (a good retrain), in the demo's registry."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from aimesh.examples import make_fraud_dataset
    from aimesh.registry import LocalRegistry, push_model

    x, y = make_fraud_dataset(4_000)
    registry = LocalRegistry.from_settings(config, actor="demo")
    try:
        if {m.name for m in registry.list_models()} >= {"fraud"}:
            return
        good = LogisticRegression(max_iter=300).fit(x, y)
        broken = LogisticRegression(max_iter=300).fit(x, y)
        broken.intercept_ = np.array(["broken"])  # a corrupt build: every call fails
        retrain = LogisticRegression(max_iter=300, C=0.5).fit(x, y)
        for number, model in enumerate((good, broken, retrain), start=1):
            path = folder / f"fraud-{number}.skops"
            sio.dump(model, path)
            push_model(registry, "fraud", path, aliases=["champion"] if number == 1 else ())
    finally:
        registry.close()


class _Load:
    """Steady traffic through the gateway (a few clients in threads) until stopped."""

    def __init__(self, url: str, key: str) -> None:
        x = np.random.default_rng(0).normal(size=(1, 30))
        self.body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30],
                                 "data": x.ravel().tolist()}]}  # fmt: skip
        self.url = f"{url}/v2/models/fraud/infer"
        self.headers = {"X-API-Key": key}
        self.stop = threading.Event()
        self.answers: dict[int, int] = {}
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    status = client.post(self.url, json=self.body).status_code
                except httpx.TransportError:
                    status = 0
                self.answers[status] = self.answers.get(status, 0) + 1


def _follow(config: Settings, until: Callable[[str], bool]) -> str:
    """Print the rollout's decisions as they come; return its state once ``until`` holds."""
    from aimesh.registry import ROLLOUTS, LocalRegistry

    registry = LocalRegistry.from_settings(config, actor="demo")
    shown = 0
    deadline = time.monotonic() + _DECIDED_S
    try:
        while True:
            status = registry.get_record(ROLLOUTS, "fraud").spec.status
            for decision in status.decisions[shown:]:
                figures = ", ".join(
                    f"{k} {v:.3g}" for k, v in decision.figures.items() if k.startswith("cand")
                )
                console.print(
                    f"  [bold]{decision.action:<12}[/bold] {decision.weight:>3}%  "
                    f"{decision.reason}" + (f"  [dim]({figures})[/dim]" if figures else "")
                )
            shown = len(status.decisions)
            if until(status.state) or time.monotonic() > deadline:
                return status.state
            time.sleep(0.5)
    finally:
        registry.close()


def _canary(config: Settings, candidate: int, **options: object) -> None:
    """Start a canary of ``candidate`` as ``aimesh rollout start`` does."""
    from aimesh.errors import RecordNotFound
    from aimesh.registry import ROLLOUTS, LocalRegistry
    from aimesh.registry.outbox import flush_outbox
    from aimesh.rollouts import Canary, started

    registry = LocalRegistry.from_settings(config, actor="demo")
    try:
        baseline = registry.get_version("fraud", "champion").version
        policy = Canary(baseline=baseline, candidate=candidate, **options)
        rollout = started("fraud", policy, "demo", datetime.now(UTC))
        try:
            current = registry.get_record(ROLLOUTS, "fraud")
        except RecordNotFound:
            registry.create_record(ROLLOUTS, "fraud", rollout)
        else:
            registry.replace_record(ROLLOUTS, "fraud", rollout, revision=current.revision)
        flush_outbox(registry.store, config)
    finally:
        registry.close()


@handle_errors
def rollout(
    interval: Annotated[float, typer.Option(help="Seconds each canary step is judged.")] = 5.0,
) -> None:
    """Canaries decided on their own: a broken version rolled back, a good one promoted.

    Runs its own stack (registry, three versions of fraud, the rollout controller, the
    gateway) in HOME/demo-rollout on the embedded bus, sends traffic through the gateway,
    and prints every decision of the controller with its figures.
    """
    from aimesh.bus import ensure_bus, stop_embedded_bus
    from aimesh.cli.local import show_stack
    from aimesh.config import load_settings
    from aimesh.local import STAGES, stack_report, start_detached, stop_stack
    from aimesh.registry import service_credential

    folder = settings().home_dir / "demo-rollout"
    folder.mkdir(parents=True, exist_ok=True)
    project = folder / "aimesh.yaml"
    project.write_text(PROJECT.format(home=folder / "home"))
    # The demo's stack lives in a home of its own, whatever AIMESH_HOME says (it would win
    # over the project file): its processes inherit this.
    os.environ["AIMESH_HOME"] = str(folder / "home")
    stack = load_settings(project)
    ensure_bus(stack)
    with console.status("registering fraud 1 (champion), 2 (broken), 3 (retrained)"):
        _versions(stack, folder)
    home = stack.home_dir
    try:
        with console.status("starting the stack: registry, 3 model services, controller, gateway"):
            state = start_detached(home, ["up", "--file", str(project)],
                                   timeout_s=60.0 * len(STAGES) + 60)  # fmt: skip
        show_stack(asyncio.run(stack_report(home, settings=stack)))
        gateway = next(p for p in state.processes if p.kind == "gateway").rest_url
        with _Load(gateway, service_credential(stack)) as load:
            console.print(f"\n[bold]canary[/bold] fraud 2 (broken) at 10%, then 100%, "
                          f"judged every {interval:g}s:")  # fmt: skip
            _canary(stack, 2, steps=[10, 100], interval_s=interval, min_requests=20)
            first = _follow(stack, lambda s: s != "running")
            console.print("\n[bold]canary[/bold] fraud 3 (retrained) at 20%, 50%, 100%:")
            _canary(stack, 3, steps=[20, 50, 100], interval_s=interval, min_requests=20,
                    max_p99_ratio=3.0)  # fmt: skip
            second = _follow(stack, lambda s: s != "running")
        table = Table("canary", "outcome", title="what the controller decided")
        table.add_row("fraud 2 (broken)", first)
        table.add_row("fraud 3 (retrained)", second)
        console.print(table)
        answered = ", ".join(f"{n} x {s or 'no answer'}" for s, n in sorted(load.answers.items()))
        console.print(f"[bold]clients[/bold]  {answered}")
        if (first, second) != ("rolled_back", "promoted"):
            raise typer.Exit(1)
    finally:
        with console.status("stopping the stack and its bus"):
            stop_stack(home, timeout_s=120.0, settings=stack)
            stop_embedded_bus(stack)

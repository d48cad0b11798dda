"""``aimesh controller`` (the rollout controller's process) and ``aimesh breakers``."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from aimesh.cli._app import (
    Insecure,
    ProbeHost,
    ProbePort,
    check_exposure,
    console,
    err_console,
    handle_errors,
    settings,
)
from aimesh.config import Settings
from aimesh.errors import BusUnavailable

log = logging.getLogger("aimesh.rollouts")


@handle_errors
def controller(
    host: ProbeHost = "127.0.0.1",
    port: ProbePort = None,
    insecure: Insecure = False,
) -> None:
    """Run the rollout controller until Ctrl-C: judge running canaries and move them on.

    One controller works at a time (a lease on the bus); start a second one anywhere as a
    standby: it takes over, from the recorded step, when the first one stops or dies.
    With --port, /health answers 200 while it is connected to the bus (active or standby:
    the body says which) and /metrics counts its decisions.
    """
    from aimesh.observability import configure_logging, run_service

    config = settings()
    configure_logging(config.log_level, config.log_format)
    if port is not None:
        check_exposure(config, host, "controller", insecure=insecure)
    decisions = run_service(_run(config, host, port))
    err_console.print(f"controller stopped: {decisions} decisions written", highlight=False)


async def _run(config: Settings, host: str, port: int | None) -> int:
    from aimesh.bus import announce, describe_service, open_bus
    from aimesh.controller import Controller, controller_probe
    from aimesh.observability import cancel_and_wait, stop_on_signals
    from aimesh.registry import KeyWatch, open_registry
    from aimesh.rest import guard_of, serve_probe

    stop = asyncio.Event()
    stop_on_signals(stop.set, what="the controller", grace_s=10.0)
    bus = await open_bus(config, name="controller")
    registry = await asyncio.to_thread(open_registry, config)
    work = Controller(registry, bus)
    tasks: list[asyncio.Task[None]] = []
    rest_url = None
    if port is not None:
        keys = KeyWatch(config)
        tasks.append(asyncio.create_task(keys.run(), name="controller-keys"))
        probe = controller_probe(work, keys.keyring, guard_of(config.auth))
        served, bound = await serve_probe(probe, host, port, name="controller")
        tasks.append(served)
        rest_url = f"http://{host}:{bound}"
        log.info("controller health on %s/health", rest_url)
    # Its entry names the health port, as a worker's does (`aimesh status` finds it by it).
    describe = describe_service("controller", "controller", rest_url=rest_url)
    tasks.append(
        asyncio.create_task(
            announce(config, describe, interval_s=config.serving.heartbeat_s), name="announce"
        )
    )
    try:
        await work.run(stop)
        return work.decisions
    finally:
        await cancel_and_wait(tasks, 5.0)
        await asyncio.to_thread(registry.close)
        await bus.close()


@handle_errors
def breakers(
    gateway: Annotated[
        str | None,
        typer.Option(help="A gateway's URL (default: every gateway discovery lists)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every circuit breaker and ejected instance of the gateways, with state and counts."""
    config = settings()
    urls = [gateway] if gateway else asyncio.run(_gateways(config))
    if not urls:
        raise BusUnavailable("no gateway is running (start one, or give --gateway URL)")
    reports: dict[str, Any] = {}
    headers = _headers(config)
    for url in urls:
        answer = httpx.get(f"{url.rstrip('/')}/breakers", headers=headers, timeout=5.0)
        answer.raise_for_status()
        reports[url] = answer.json()
    if json_out:
        console.print_json(data=reports)
        return
    table = Table("gateway", "route", "model", "version", "state", "calls", "failure rate",
                  "slow rate", "refused", "for", title="circuit breakers")  # fmt: skip
    ejected = Table("gateway", "service", "instance", "state", "failures in a row",
                    "times ejected", "for", title="instances")  # fmt: skip
    for url, report in reports.items():
        for b in report["breakers"]:
            table.add_row(
                url, b["route"], b["model"], b["version"] or "-", b["state"], str(b["calls"]),
                f"{b['failure_rate']:.0%}", f"{b['slow_call_rate']:.0%}", str(b["rejected"]),
                _for(b["for_s"]),
            )  # fmt: skip
        for i in report["instances"]:
            ejected.add_row(
                url, i["service"], i["instance"], i["state"], str(i["consecutive_failures"]),
                str(i["times_ejected"]), _for(i["for_s"]),
            )  # fmt: skip
    if not all(r["enabled"] for r in reports.values()):
        err_console.print("note: the resilience layer is off on some gateways")
    console.print(table)
    console.print(ejected)


def _for(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}s"


def _headers(config: Settings) -> dict[str, str]:
    from aimesh.registry import service_credential

    return {"X-API-Key": service_credential(config)}


async def _gateways(config: Settings) -> list[str]:
    from aimesh.bus import list_instances, open_bus

    bus = await open_bus(config, name="cli")
    try:
        return [i.rest_url for i in await list_instances(bus, "gateway") if i.rest_url]
    finally:
        await bus.close()

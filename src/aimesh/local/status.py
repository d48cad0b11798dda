"""``aimesh status``: the recorded stack, checked now (health probes, discovery, versions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
import msgspec
import nats.errors

from aimesh.auth import service_key
from aimesh.bus import BusCredentials, ServiceInstance, connect
from aimesh.errors import AimeshError
from aimesh.local.discovery import instances_by_port, stack_bus
from aimesh.local.state import ProcessState, StackState, read_state, supervisor_running

if TYPE_CHECKING:
    from aimesh.config import Settings

log = logging.getLogger("aimesh.local")

Health = Literal["ready", "not ready", "down"]


class ProcessReport(msgspec.Struct, kw_only=True):
    """One process as recorded, plus what a probe and the discovery bucket say now."""

    process: ProcessState
    health: Health
    discovered: bool
    version: str | None = None
    uptime_s: float | None = None


class StackReport(msgspec.Struct, kw_only=True):
    """A home's stack: whether its supervisor runs, what it recorded, each process checked."""

    running: bool
    home: str
    stack: StackState | None = None
    bus: Health | None = None
    """Whether the stack's bus answers now (``ready`` or ``down``; None: nothing runs)."""
    processes: list[ProcessReport] = msgspec.field(default_factory=list)


async def stack_report(
    home: Path, *, settings: Settings | None = None, probe_timeout_s: float = 2.0
) -> StackReport:
    """The home's stack checked now (no processes when nothing was started there).

    ``settings``: the home's, when known (an external bus's credentials are only there).
    """
    state = read_state(home)
    running = supervisor_running(home)
    if state is None:
        return StackReport(running=running, home=str(home))
    instances = await _discovered(*stack_bus(home, state.bus_url, settings))
    bus: Health | None = None
    if state.bus_url is not None:
        bus = "ready" if instances is not None else "down"
    now = datetime.now(UTC)
    # Health is open; a model's metadata needs a key when keys exist: the service credential.
    headers = {"x-api-key": await asyncio.to_thread(service_key, home)}
    async with httpx.AsyncClient(
        timeout=probe_timeout_s, trust_env=False, headers=headers
    ) as client:
        healths = await asyncio.gather(*(_probe(client, p) for p in state.processes))
        reports = []
        for process, health in zip(state.processes, healths, strict=True):
            instance = instances.get(process.http_port) if instances else None
            version = instance.version if instance is not None else None
            if version is None and process.kind == "model" and health == "ready":
                version = await _version_over_rest(client, process)
            started = process.started if process.pid is not None else None
            reports.append(
                ProcessReport(
                    process=process,
                    health=health,
                    discovered=instance is not None,
                    version=version,
                    uptime_s=(now - started).total_seconds() if started else None,
                )
            )
    return StackReport(running=running, home=str(home), stack=state, bus=bus, processes=reports)


async def _probe(client: httpx.AsyncClient, process: ProcessState) -> Health:
    if process.pid is None:
        return "down"
    try:
        response = await client.get(process.ready_url)
    except httpx.TransportError:
        return "down"
    return "ready" if response.status_code == 200 else "not ready"


async def _discovered(
    bus_url: str | None, credentials: BusCredentials
) -> dict[int, ServiceInstance] | None:
    """This machine's discovery entries by port; None (and a log line) without a bus."""
    if bus_url is None:
        return None
    try:
        async with await connect(
            bus_url, timeout=2.0, name="aimesh-status", credentials=credentials
        ) as bus:
            return await instances_by_port(bus)
    except (AimeshError, nats.errors.Error, TimeoutError) as exc:
        log.warning("discovery not read (%s)", getattr(exc, "message", exc))
        return None


async def _version_over_rest(client: httpx.AsyncClient, process: ProcessState) -> str | None:
    """The version a replica says it serves (``GET /v2/models/NAME``), for lack of discovery."""
    name = (process.ref or "").partition("@")[0]
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        response = await client.get(f"{process.rest_url}/v2/models/{name}")
        if response.status_code == 200:
            versions = response.json().get("versions") or []
            return str(versions[0]) if versions else None
    return None

"""The stack's processes as the discovery bucket sees them, found by port on this machine."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import nats.errors

from aimesh.bus import (
    Bus,
    BusCredentials,
    ServiceInstance,
    bus_credentials,
    discovery_bucket,
    home_credentials,
    list_instances,
)
from aimesh.errors import BusUnavailable

if TYPE_CHECKING:
    from aimesh.config import Settings


def stack_bus(
    home: Path, recorded_url: str | None, settings: Settings | None = None
) -> tuple[str | None, BusCredentials]:
    """Where and with what the stack's tools (status, down, clean-up) reach its bus.

    The state file records the bus URL without any password it carried, and an external
    bus's credentials are in the settings: with ``settings`` naming an external bus, its own
    URL and credentials; otherwise the recorded URL and the home's embedded token.
    """
    if settings is not None and settings.bus.url is not None:
        return settings.bus.url, bus_credentials(settings)
    return recorded_url, home_credentials(home)


def _here(instances: list[ServiceInstance]) -> Iterator[tuple[int | None, ServiceInstance]]:
    host = socket.gethostname()
    for instance in instances:
        if instance.host == host:
            yield (urlsplit(instance.rest_url).port if instance.rest_url else None), instance


async def instances_by_port(bus: Bus) -> dict[int, ServiceInstance]:
    """This machine's instances by REST port (a port has one listener, so one process)."""
    found: dict[int, ServiceInstance] = {}
    for port, instance in _here(await list_instances(bus)):
        if port is None:
            continue
        # An instance may have left more than one key; the latest heartbeat is the live one.
        known = found.get(port)
        if known is None or instance.heartbeat > known.heartbeat:
            found[port] = instance
    return found


async def forget_instances(bus: Bus, *, ports: set[int], pids: set[int]) -> int:
    """Purge this machine's entries that listen on ``ports`` or belong to ``pids``; how many."""
    bucket = await discovery_bucket(bus)
    purged = 0
    for port, instance in _here(await list_instances(bus)):
        if port in ports or instance.pid in pids:
            try:
                await bucket.purge(instance.key)
            except (nats.errors.Error, TimeoutError) as exc:
                raise BusUnavailable(f"cannot purge {instance.key}: {exc}") from exc
            purged += 1
    return purged


async def purge_quietly(
    bus_url: str, *, credentials: BusCredentials, ports: set[int], pids: set[int]
) -> None:
    """:func:`forget_instances` on a short-lived connection, ignoring a bus that is gone."""
    from aimesh.bus import connect

    with contextlib.suppress(BusUnavailable):
        async with await connect(
            bus_url, timeout=2.0, name="aimesh-cleanup", credentials=credentials
        ) as bus:
            await forget_instances(bus, ports=ports, pids=pids)

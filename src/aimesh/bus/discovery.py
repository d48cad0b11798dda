"""Discovery: every running service instance keeps a key alive in a NATS KV bucket.

An instance puts its :class:`ServiceInstance` under ``<kind>.<name>.<id>`` every heartbeat;
the bucket's TTL removes the key of an instance that died without saying goodbye, and a
clean shutdown deletes it at once. Gateways and pipelines watch the bucket rather than
poll anything. On Kubernetes the addresses change, not this code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from aimesh.bus.connection import Bus, open_bus
from aimesh.bus.topology import DISCOVERY_BUCKET, declare_topology
from aimesh.config import Settings
from aimesh.errors import AimeshError, BusUnavailable
from aimesh.observability import cancel_and_wait

log = logging.getLogger("aimesh.bus.discovery")

_STOP_S = 5.0  # a heartbeat still running after this is left behind: shutdown goes on


class ServiceInstance(msgspec.Struct, frozen=True, kw_only=True):
    """One running service instance, as the discovery bucket records it."""

    id: str
    kind: Literal[
        "model", "registry", "gateway", "worker", "pipeline", "jobs", "lake", "controller"
    ]
    name: str
    rest_url: str | None = None
    grpc_address: str | None = None
    model: str | None = None
    ref: str | None = None
    version: str | None = None
    workers: int = 1
    pid: int = 0
    host: str = ""
    apis: tuple[str, ...] = ()
    """What else it answers under ``/api/<name>`` besides its kind (the registry: every
    record kind's plural), so gateways route those there too."""
    started: datetime
    heartbeat: datetime

    @property
    def key(self) -> str:
        """Its key in the bucket."""
        return f"{self.kind}.{self.name}.{self.id}"


def new_instance_id() -> str:
    """A short unique id for an instance."""
    return uuid.uuid4().hex[:12]


def _now() -> datetime:
    return datetime.now(UTC)


async def discovery_bucket(bus: Bus) -> KeyValue:
    """The discovery KV bucket (declare the topology first)."""
    try:
        return await bus.js.key_value(DISCOVERY_BUCKET)
    except (nats.js.errors.BucketNotFoundError, nats.errors.Error, TimeoutError) as exc:
        raise BusUnavailable(f"no discovery bucket on the bus at {bus.url}: {exc}") from exc


class Registration:
    """Keeps one instance's key alive until :meth:`stop`, which deletes it (if the bus is up)."""

    def __init__(
        self,
        bus: Bus,
        describe: Callable[[], ServiceInstance],
        *,
        interval_s: float,
    ) -> None:
        self._bus = bus
        self._describe = describe
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._key: str | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        """Put the key now, then keep it alive in the background."""
        self._kv = await discovery_bucket(self._bus)
        await self._put()
        self._task = asyncio.create_task(self._beat(), name="discovery-heartbeat")

    def changed(self) -> None:
        """Ask for an update now (e.g. after a version swap) instead of at the next beat."""
        self._wake.set()

    async def _put(self) -> None:
        assert self._kv is not None
        instance = msgspec.structs.replace(self._describe(), heartbeat=_now())
        self._key = instance.key
        await self._kv.put(instance.key, msgspec.json.encode(instance))

    async def _beat(self) -> None:
        # The loop ends on the flag, not only on cancellation: Python 3.11's wait_for (here,
        # and inside nats-py's request) drops a cancellation that lands as the awaited
        # future completes, and a heartbeat woken by a swap just before a shutdown hit that
        # race, so the process ignored SIGTERM (its stop awaited this task for ever).
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._put()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("discovery heartbeat failed: %s", exc)

    async def stop(self) -> None:
        """Stop the heartbeat and delete the key."""
        self._stopping = True
        self._wake.set()
        if self._task is not None and not await cancel_and_wait([self._task], _STOP_S):
            log.warning("the discovery heartbeat did not stop within %.0fs", _STOP_S)
        # Without the bus the key cannot be deleted now; it expires with its TTL instead
        # (and waiting for the purge's timeout would only hold up a shutdown).
        if self._kv is not None and self._key is not None and self._bus.connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._kv.purge(self._key)


async def list_instances(bus: Bus, kind: str | None = None) -> list[ServiceInstance]:
    """Every live instance in the bucket (of one kind, if given)."""
    kv = await discovery_bucket(bus)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    found: list[ServiceInstance] = []
    decoder = msgspec.json.Decoder(ServiceInstance)
    for key in keys:
        if kind is not None and not key.startswith(f"{kind}."):
            continue
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            try:
                found.append(decoder.decode(entry.value))
            except msgspec.DecodeError:
                log.warning("skipping a malformed discovery entry %s", key)
    return found


def describe_service(
    kind: str,
    name: str,
    *,
    rest_url: str | None = None,
    grpc_address: str | None = None,
    workers: int = 1,
    instance_id: str | None = None,
    apis: Sequence[str] = (),
) -> Callable[[], ServiceInstance]:
    """A ``describe`` for :class:`Registration` when the entry does not change while it runs."""
    started = _now()
    instance = ServiceInstance(
        id=instance_id or new_instance_id(),
        kind=kind,  # type: ignore[arg-type]
        name=name,
        rest_url=rest_url,
        grpc_address=grpc_address,
        workers=workers,
        apis=tuple(apis),
        pid=this_pid(),
        host=this_host(),
        started=started,
        heartbeat=started,
    )
    return lambda: instance


def this_host() -> str:
    """This machine's name, for instance records."""
    return socket.gethostname()


def this_pid() -> int:
    """This process's id, for instance records."""
    return os.getpid()


async def announce(
    settings: Settings, describe: Callable[[], ServiceInstance], *, interval_s: float
) -> None:
    """Keep ``describe()``'s discovery entry alive until cancelled, through outages of the bus.

    For a service whose work does not need the bus (the registry, the lake): it starts
    without one, announces itself once the bus answers, and again after losing it.
    """
    backoff = 0.5
    kind = describe().kind
    while True:
        try:
            async with await open_bus(settings, name=f"{kind}-discovery") as bus:
                await declare_topology(bus)
                registration = Registration(bus, describe, interval_s=interval_s)
                await registration.start()
                try:
                    await asyncio.Event().wait()  # until cancelled
                finally:
                    await registration.stop()
        except AimeshError as exc:
            log.warning("%s not announced for discovery: %s", kind, exc.message)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)

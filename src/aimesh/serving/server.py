"""Running a model service: one worker process, or a parent with N workers on shared ports.

A worker binds REST (uvicorn, on a socket it made with SO_REUSEPORT) and gRPC (grpc.aio,
which sets SO_REUSEPORT itself), loads the model before it listens, follows the alias over
the bus, and keeps a discovery entry (worker 0 only). It stops in order: leave discovery,
stop accepting, let requests in flight finish (up to the drain timeout), release the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import uvicorn

from aimesh import runtimes
from aimesh.bus import (
    Bus,
    Registration,
    ServiceInstance,
    declare_topology,
    new_instance_id,
    open_bus,
    this_host,
    this_pid,
)
from aimesh.config import Settings
from aimesh.errors import AimeshError
from aimesh.observability import STOP_SIGNALS, cancel_and_wait, stop_on_signals
from aimesh.registry import KeyWatch, open_registry
from aimesh.rest import Guard
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.grpc import start_grpc_server
from aimesh.serving.host import ModelHost, ModelRef, settle_heap
from aimesh.serving.metrics import ServingMetrics
from aimesh.serving.model import BatchingOptions, ServedModel
from aimesh.serving.rest import RestApp

log = logging.getLogger("aimesh.serving")

_BACKGROUND_STOP_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker serves and where: ports are concrete (never 0) when workers > 1."""

    ref: ModelRef
    host: str
    http_port: int
    grpc_port: int
    workers: int = 1
    index: int = 0
    instance_id: str = ""


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other workers may bind too (SO_REUSEPORT)."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so; without it each response waits for a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the worker decides when and how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def stop_grace_s(settings: Settings) -> float:
    """How long a worker may take to stop after a signal before its watchdog ends it.

    Its steps each wait up to the drain timeout (gRPC, REST, the data plane's requests,
    the model's), but in sequence only while requests are still running: twice it, and
    time for the bus and the discovery entry.
    """
    return 2 * settings.serving.drain_timeout_s + 15.0


def batching_options(settings: Settings) -> BatchingOptions:
    """The batching the settings ask for."""
    s = settings.serving
    return BatchingOptions(
        enabled=s.batching,
        max_batch_size=s.max_batch_size,
        max_latency_s=s.max_latency_ms / 1000,
        max_queue=s.max_queue,
    )


async def run_worker(settings: Settings, plan: WorkerPlan) -> None:
    """Serve until SIGTERM or SIGINT, then stop in order."""
    s = settings.serving
    # before the model loads: its libraries start capped (and each load caps them again)
    threads = runtimes.cap_threads(s.threads)
    registry = open_registry(settings)
    metrics = ServingMetrics()
    registration: Registration | None = None

    def swapped(model: ServedModel) -> None:
        metrics.load_time.labels(model.name, model.version_label).set(model.load_seconds)
        if registration is not None:
            registration.changed()

    host = ModelHost(
        registry,
        plan.ref,
        batching=batching_options(settings),
        drain_timeout_s=s.drain_timeout_s,
        on_batch=metrics.batch_observer(plan.ref.name),
        on_swap=swapped,
    )
    await host.start()
    pools = await host.current.native_thread_pools()
    log.info(
        "native threads capped at %d per worker: %s",
        threads,
        ", ".join(f"{api} {n}" for api, n in sorted(pools.items())) or "no native pool loaded",
    )
    # Everything loaded so far (libraries, the model) lives as long as the process: move it
    # out of the collector's sight, so full collections under load stay short (measured:
    # p99 without batching fell from ~300 ms to ~70 ms at concurrency 64). Swaps do it again.
    settle_heap()
    plane = DataPlane(
        host, max_concurrency=s.max_concurrency, request_timeout_s=s.request_timeout_s
    )
    sock = reuse_port_socket(plan.host, plan.http_port)
    http_port = sock.getsockname()[1]
    keys = await asyncio.to_thread(KeyWatch, settings)
    keeping_keys = asyncio.create_task(keys.run(), name="keys")
    grpc_server, grpc_port = await start_grpc_server(
        plane, metrics, plan.host, plan.grpc_port, max_message_bytes=s.max_request_bytes,
        keyring=keys.keyring,
    )  # fmt: skip
    app = RestApp(
        plane, metrics, max_request_bytes=s.max_request_bytes, keyring=keys.keyring,
        access_log=s.access_log, guard=Guard.from_settings(settings.auth),
    )  # fmt: skip
    server = _Uvicorn(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(s.drain_timeout_s) or None,
            http="httptools",
            loop="none",
        )
    )
    started = datetime.now(UTC)
    instance_id = plan.instance_id or new_instance_id()  # one key per service, kept alive

    def describe() -> ServiceInstance:
        current = host.current
        return ServiceInstance(
            id=instance_id,
            kind="model",
            name=plan.ref.name,
            model=plan.ref.name,
            ref=str(plan.ref),
            version=current.version_label,
            rest_url=f"http://{plan.host}:{http_port}",
            grpc_address=f"{plan.host}:{grpc_port}",
            workers=plan.workers,
            pid=this_pid(),
            host=this_host(),
            started=started,
            heartbeat=started,
        )

    stop = asyncio.Event()
    # Under a parent (--workers N), SIGTERM is the parent's word; a Ctrl-C is its to answer.
    signals = (signal.SIGTERM,) if plan.workers > 1 else STOP_SIGNALS
    stop_on_signals(stop.set, what=str(plan.ref), grace_s=stop_grace_s(settings), signals=signals)

    bus, background = await _join_bus(settings, host)
    if bus is not None and plan.index == 0:
        registration = Registration(bus, describe, interval_s=s.heartbeat_s)
        try:
            await registration.start()
        except AimeshError as exc:
            log.warning("not registered for discovery: %s", exc.message)
            registration = None

    serving = asyncio.create_task(server.serve(sockets=[sock]), name="rest")
    log.info(
        "serving %s version %s: REST http://%s:%d, gRPC %s:%d (worker %d of %d)",
        plan.ref, host.current.version_label, plan.host, http_port, plan.host, grpc_port,
        plan.index + 1, plan.workers,
    )  # fmt: skip
    await asyncio.wait([serving, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED")

    # Stop in order: leave discovery, stop accepting, drain, release.
    log.info("stopping %s: draining for up to %.0fs", plan.ref, s.drain_timeout_s)
    if registration is not None:
        await registration.stop()
    server.should_exit = True
    await grpc_server.stop(grace=s.drain_timeout_s)
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await plane.drain(s.drain_timeout_s)
    if not await cancel_and_wait([*background, keeping_keys], _BACKGROUND_STOP_S):
        log.warning("following %s did not stop; shutting down anyway", plan.ref)
    await host.close()
    if bus is not None:
        # nats-py flushes into a closed transport when the bus is gone, which uvloop refuses.
        with contextlib.suppress(RuntimeError):
            await bus.close()
    registry.close()
    log.info("stopped %s", plan.ref)


async def _join_bus(
    settings: Settings, host: ModelHost
) -> tuple[Bus | None, list[asyncio.Task[None]]]:
    """Connect to the bus and follow the alias; without a bus, say so once and serve anyway."""
    try:
        bus = await open_bus(settings, name=f"serve-{host.ref}")
        await declare_topology(bus)
    except AimeshError as exc:
        log.warning(
            "no bus (%s): serving %s stand-alone, without hot swap or discovery",
            exc.message, host.ref,
        )  # fmt: skip
        return None, []
    return bus, [asyncio.create_task(_follow_forever(host, bus), name="follow-alias")]


async def _follow_forever(host: ModelHost, bus: Bus) -> None:
    backoff = 0.5
    while True:
        try:
            await host.follow(bus)
        except AimeshError as exc:
            log.warning("following %s: %s; retrying", host.ref, exc.message)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)

"""Running the gateway: REST (uvicorn) and gRPC (grpc.aio) in one process, fed by the bus.

At start the gateway binds both ports at once (so ``/health`` answers 503 while it gets
ready), then connects to the bus, watches the discovery bucket and follows registry events;
``/health`` turns 200 once the discovery listing is in the routing table, and answers 503
again whenever the bus connection is lost (the gateway is live but not ready: it cannot
see instances come and go) until it is back. Without a bus it keeps trying. It stops in
order: leave discovery, stop accepting and let requests in flight finish (no longer than
the upstream timeout), stop watching, close pools and channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn

from aimesh.bus import (
    Bus,
    Registration,
    ServiceInstance,
    declare_topology,
    describe_service,
    new_instance_id,
    open_bus,
)
from aimesh.config import Settings
from aimesh.errors import AimeshError
from aimesh.gateway.catalog import RegistryCatalog
from aimesh.gateway.core import ModelCore
from aimesh.gateway.deferred import Deferrer
from aimesh.gateway.grpc import GrpcGateway, start_grpc
from aimesh.gateway.http1 import HttpClient
from aimesh.gateway.instances import LeastOutstanding, Upstream, address_of
from aimesh.gateway.metrics import GatewayMetrics
from aimesh.gateway.openapi import MergedOpenApi, gateway_document
from aimesh.gateway.rest import GatewayApp
from aimesh.gateway.routing import Router, RoutingTable
from aimesh.gateway.shadow import Shadows
from aimesh.gateway.traffic import TrafficTable
from aimesh.gateway.watch import (
    DiscoveryWatch,
    forget_on_registry_events,
    publish_figures,
    refresh_traffic,
)
from aimesh.observability import cancel_and_wait, run_service, stop_on_signals
from aimesh.registry import KeyWatch
from aimesh.resilience import Resilience
from aimesh.rest import Guard, Readiness, bus_check
from aimesh.rollouts import FigureBook

__all__ = ["run_gateway", "serve"]

log = logging.getLogger("aimesh.gateway")

# Requests in flight cannot outlast the upstream timeout; nor should the drain.
_MAX_DRAIN_S = 20.0
# Longest wait to delete our discovery key at shutdown.
_GOODBYE_S = 1.0


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway decides when and how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT (on uvloop when it is installed)."""
    run_service(run_gateway(settings))


async def run_gateway(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[int, int], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or a signal arrives), then stop in order."""
    g = settings.gateway
    drain_s = min(g.upstream_timeout_s, _MAX_DRAIN_S)
    client = HttpClient(max_connections_per_upstream=g.max_connections_per_upstream)
    grpc_gateway: GrpcGateway | None = None

    def removed(upstream: Upstream) -> None:
        if upstream.rest is not None:
            client.forget(*upstream.rest)
        if grpc_gateway is not None:
            grpc_gateway.forget(upstream)

    table = RoutingTable(on_removed=removed)
    catalog = RegistryCatalog(settings)
    router = Router(table, catalog)
    policy = LeastOutstanding()
    keys = KeyWatch(settings)
    metrics = GatewayMetrics()
    gateway_id = new_instance_id()
    figures = FigureBook(gateway_id)
    resilience = (
        Resilience(g.resilience, call_timeout_s=g.upstream_timeout_s, listener=metrics.state_change)
        if g.resilience.enabled
        else None
    )
    traffic = TrafficTable(catalog.rollout, catalog.rollouts)
    core = ModelCore(
        router, policy, call_timeout_s=g.upstream_timeout_s, resilience=resilience,
        traffic=traffic,
    )  # fmt: skip
    # Keys may be made at any time: the document always says how to present one.
    openapi = MergedOpenApi(gateway_document(auth=True), auth=True)
    registry_fallback = _configured_registry(settings)
    ready = asyncio.Event()  # the discovery listing is in the table
    connection: list[Bus | None] = [None]
    readiness = Readiness()
    readiness.require("bus", bus_check(lambda: connection[0]))
    readiness.require("discovery", lambda: None if ready.is_set() else "not listed yet")
    deferrer = Deferrer(settings.jobs)

    shadows = Shadows(core, figures)
    app = GatewayApp(
        router=router, client=client, policy=policy, keyring=keys.keyring,
        metrics=metrics, openapi=openapi, max_request_bytes=g.max_request_bytes,
        upstream_timeout_s=g.upstream_timeout_s, readiness=readiness,
        registry_fallback=registry_fallback, deferrer=deferrer,
        guard=Guard.from_settings(settings.auth), figures=figures, core=core, shadows=shadows,
    )  # fmt: skip
    grpc_gateway = GrpcGateway(
        router=router, client=client, policy=policy, keyring=keys.keyring,
        metrics=metrics, upstream_timeout_s=g.upstream_timeout_s,
        max_message_bytes=g.max_request_bytes, readiness=readiness, core=core,
        figures=figures, shadows=shadows,
    )  # fmt: skip
    grpc_server, grpc_port = await start_grpc(
        grpc_gateway, g.host, g.grpc_port, max_message_bytes=g.max_request_bytes
    )
    sock = _listening_socket(g.host, g.port)
    http_port: int = sock.getsockname()[1]
    server = _Uvicorn(
        uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, http="httptools",
            loop="none", server_header=False, proxy_headers=False,
            timeout_graceful_shutdown=int(drain_s) or None,
        )
    )  # fmt: skip
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-rest")
    keeping_keys = asyncio.create_task(keys.run(), name="gateway-keys")
    log.info("gateway on http://%s:%d and gRPC %s:%d", g.host, http_port, g.host, grpc_port)
    if on_listening is not None:
        on_listening(http_port, grpc_port)

    registry_url: list[str | None] = [None]

    def changed() -> None:
        registries = table.services("registry")
        rest = registries[0].rest if registries else None
        url = f"http://{rest[0]}:{rest[1]}" if rest else None
        if url != registry_url[0]:
            registry_url[0] = url
            catalog.use(url)

    describe = _describer(g.host, http_port, grpc_port, gateway_id)
    follower = asyncio.create_task(
        _follow_bus(
            settings,
            table,
            catalog,
            changed,
            ready,
            describe,
            deferrer,
            connection,
            figures,
            traffic,
        ),
        name="gateway-bus",
    )

    stop = stop or asyncio.Event()
    stop_on_signals(stop.set, what="the gateway", grace_s=2 * drain_s + 15)
    await asyncio.wait([serving, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED")

    # Stop in order: leave discovery (the follower), stop accepting and drain, then close.
    # Each step runs whatever the one before it did: a failure is logged, never a reason
    # to leave a port open.
    follower.cancel()
    await _step("leaving the bus", follower)
    await _step("following the keys", cancel_and_wait([keeping_keys], 5.0))
    server.should_exit = True
    await _step("draining gRPC", grpc_server.stop(grace=drain_s))
    await _step("draining REST", serving)
    await _step("closing gRPC channels", grpc_gateway.close())
    client.close()
    await _step("stopping traffic fetches", traffic.close())
    await _step("stopping shadow copies", shadows.close())
    await _step("closing the registry", asyncio.to_thread(catalog.close))
    log.info("gateway stopped")


async def _step(what: str, awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except asyncio.CancelledError:
        pass
    except Exception:
        log.warning("while %s", what, exc_info=True)


def _listening_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every response waits for the client's delayed ACK (~40 ms).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _configured_registry(settings: Settings) -> Upstream | None:
    """``registry.url`` as an upstream, for when discovery has no registry to offer."""
    if not settings.registry.url:
        return None
    try:
        host, port = address_of(settings.registry.url)
    except ValueError:
        log.warning("registry.url %s is not an http URL; not proxied", settings.registry.url)
        return None
    return Upstream(
        key="config.registry", kind="registry", name="registry", rest=(host, port),
        label=f"{host}:{port}",
    )  # fmt: skip


def _describer(
    host: str, http_port: int, grpc_port: int, gateway_id: str
) -> Callable[[], ServiceInstance]:
    return describe_service(
        "gateway",
        "gateway",
        rest_url=f"http://{host}:{http_port}",
        grpc_address=f"{host}:{grpc_port}",
        instance_id=gateway_id,
    )


async def _follow_bus(
    settings: Settings,
    table: RoutingTable,
    catalog: RegistryCatalog,
    changed: Callable[[], None],
    ready: asyncio.Event,
    describe: Callable[[], ServiceInstance],
    deferrer: Deferrer,
    connection: list[Bus | None],
    figures: FigureBook,
    traffic: TrafficTable,
) -> None:
    """Connect to the bus (retrying), then watch discovery and registry events until cancelled.

    ``connection`` receives the bus connection, for the readiness check.
    """
    bus = await _connect_patiently(settings)
    connection[0] = bus
    try:
        await deferrer.attach(bus)
    except AimeshError as exc:
        log.warning("async inference unavailable: %s", exc.message)
    watch = DiscoveryWatch(bus, table, on_change=changed)
    tasks = [
        asyncio.create_task(watch.run(), name="discovery-watch"),
        asyncio.create_task(
            forget_on_registry_events(bus, catalog, traffic), name="registry-events"
        ),
        asyncio.create_task(refresh_traffic(traffic), name="traffic-refresh"),
        asyncio.create_task(publish_figures(bus, figures), name="figures"),
    ]
    registration: Registration | None = None
    try:
        await watch.ready.wait()
        # What the gateway holds from now on lives as long as it does: out of the GC's sight,
        # so that full collections under load stay short (as the model service does).
        gc.collect()
        gc.freeze()
        ready.set()
        log.info("gateway ready: discovery watched")
        registration = Registration(bus, describe, interval_s=settings.serving.heartbeat_s)
        try:
            await registration.start()
        except AimeshError as exc:
            log.warning("gateway not registered for discovery: %s", exc.message)
            registration = None
        await asyncio.gather(*tasks)
    finally:
        if registration is not None:
            # Say goodbye if the bus is there to hear it; else the key's TTL does.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(registration.stop(), _GOODBYE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _step("closing the job client", deferrer.close())
        # nats-py flushes into a closed transport when the bus is gone, which uvloop refuses.
        with contextlib.suppress(RuntimeError):
            await bus.close()


async def _connect_patiently(settings: Settings) -> Bus:
    backoff = 0.5
    warned = False
    while True:
        try:
            bus = await open_bus(settings, name="gateway")
        except AimeshError as exc:
            if not warned:
                log.warning("no bus yet (%s); the gateway keeps trying", exc.message)
                warned = True
        else:
            try:
                await declare_topology(bus)
            except AimeshError as exc:
                log.warning("cannot declare the bus topology: %s", exc.message)
                await bus.close()
            else:
                return bus
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)

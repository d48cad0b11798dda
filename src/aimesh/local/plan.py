"""What ``aimesh up`` will run: one :class:`ProcessSpec` per process, in start order.

The order is registry, lake, jobs, model replicas, workers, the rollout controller,
gateway: each stage may need the ones before (model services load from the registry's
store; training workers read the lake and push to the registry; the controller judges
rollouts by the registry; the gateway routes to all of them). Ports are settled here,
once: the configured ones for the registry, lake, jobs and gateway, free ones for each model
replica and each worker's health route, kept across restarts so that clients find a
restarted process again.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aimesh.config import ModelServiceSpec, Settings, WorkerSpec
from aimesh.errors import ConfigError
from aimesh.local.state import ProcessKind, ProcessState, logs_dir
from aimesh.runtimes import share_of_cores

# The stages, in start order; stopping walks them backwards.
STAGES: tuple[ProcessKind, ...] = (
    "registry", "lake", "jobs", "model", "worker", "controller", "gateway",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process to run: the ``aimesh`` arguments, its ports, and how to tell it is ready."""

    name: str
    service: str
    replica: int
    kind: ProcessKind
    args: tuple[str, ...]
    host: str
    http_port: int
    grpc_port: int | None
    ready_path: str
    log_file: Path
    ref: str | None = None

    @property
    def address(self) -> str:
        """Where a client on this machine reaches it (a wildcard bind answers on loopback)."""
        return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)

    @property
    def rest_url(self) -> str:
        """Its REST base URL."""
        return f"http://{self.address}:{self.http_port}"

    @property
    def grpc_address(self) -> str | None:
        """Its gRPC ``host:port``, if it speaks gRPC."""
        return f"{self.address}:{self.grpc_port}" if self.grpc_port else None

    @property
    def ready_url(self) -> str:
        """The URL that answers 200 once it can serve."""
        return self.rest_url + self.ready_path

    def initial_state(self) -> ProcessState:
        """Its entry in the stack state before it first starts."""
        return ProcessState(
            name=self.name,
            service=self.service,
            replica=self.replica,
            kind=self.kind,
            host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            rest_url=self.rest_url,
            grpc_address=self.grpc_address,
            ready_url=self.ready_url,
            log_file=str(self.log_file),
            ref=self.ref,
        )


def plan_stack(settings: Settings) -> list[ProcessSpec]:
    """Every process the settings declare, in start order, with its ports settled."""
    ports = _PortBook()
    logs = logs_dir(settings.home_dir)
    specs: list[ProcessSpec] = []
    if settings.services.registry:
        host = settings.registry.host
        port = ports.fixed("registry.port", host, settings.registry.port)
        specs.append(
            ProcessSpec(
                name="registry",
                service="registry",
                replica=1,
                kind="registry",
                args=("registry", "serve", "--host", host, "--port", str(port)),
                host=host,
                http_port=port,
                grpc_port=None,
                ready_path="/health",
                log_file=logs / "registry.log",
            )
        )
    services: tuple[tuple[ProcessKind, bool, str, int], ...] = (
        ("lake", settings.services.lake, settings.lake.host, settings.lake.port),
        ("jobs", settings.services.jobs, settings.jobs.host, settings.jobs.port),
    )
    for kind, enabled, host, configured in services:
        if not enabled:
            continue
        port = ports.fixed(f"{kind}.port", host, configured)
        specs.append(
            ProcessSpec(
                name=kind,
                service=kind,
                replica=1,
                kind=kind,
                args=(kind, "serve", "--host", host, "--port", str(port)),
                host=host,
                http_port=port,
                grpc_port=None,
                ready_path="/health",
                log_file=logs / f"{kind}.log",
            )
        )
    names = _service_names(settings.services.models)
    for spec, service in zip(settings.services.models, names, strict=True):
        specs += _model_replicas(settings, spec, service, ports, logs)
    share = model_threads(settings)
    for worker in settings.services.workers:
        specs += _workers(worker, ports, logs, settings.jobs.threads or share)
    if settings.services.controller:
        host = "127.0.0.1"  # the health route is for the supervisor on this machine
        port = ports.free(host, "controller")
        specs.append(
            ProcessSpec(
                name="controller",
                service="controller",
                replica=1,
                kind="controller",
                args=("controller", "--host", host, "--port", str(port)),
                host=host,
                http_port=port,
                grpc_port=None,
                ready_path="/health",
                log_file=logs / "controller.log",
            )
        )
    if settings.services.gateway:
        gateway = settings.gateway
        port = ports.fixed("gateway.port", gateway.host, gateway.port)
        grpc_port = ports.fixed("gateway.grpc_port", gateway.host, gateway.grpc_port)
        specs.append(
            ProcessSpec(
                name="gateway",
                service="gateway",
                replica=1,
                kind="gateway",
                args=("gateway", "serve", "--port", str(port), "--grpc-port", str(grpc_port)),
                host=gateway.host,
                http_port=port,
                grpc_port=grpc_port,
                ready_path="/health",
                log_file=logs / "gateway.log",
            )
        )
    return specs


def model_threads(settings: Settings) -> int:
    """Native threads for each job worker of the stack: the cores divided.

    Every model worker process and every job worker counts (each may load a model);
    Model services use ``serving.threads`` (one by default) instead: see its description.
    """
    processes = sum(m.replicas * m.workers for m in settings.services.models)
    processes += sum(w.replicas for w in settings.services.workers)
    return share_of_cores(processes)


def _model_replicas(
    settings: Settings,
    spec: ModelServiceSpec,
    service: str,
    ports: _PortBook,
    logs: Path,
) -> list[ProcessSpec]:
    host = settings.serving.host
    threads = settings.serving.threads
    options = ["--workers", str(spec.workers), "--threads", str(threads)]
    if spec.batching is not None:
        options.append("--batching" if spec.batching else "--no-batching")
    if spec.max_batch_size is not None:
        options += ["--max-batch-size", str(spec.max_batch_size)]
    if spec.max_latency_ms is not None:
        options += ["--max-latency-ms", str(spec.max_latency_ms)]
    replicas = []
    for replica in range(1, spec.replicas + 1):
        name = f"{service}.{replica}"
        http_port, grpc_port = ports.free(host, name), ports.free(host, name)
        listen = ("--http-port", str(http_port), "--grpc-port", str(grpc_port))
        replicas.append(
            ProcessSpec(
                name=name,
                service=service,
                replica=replica,
                kind="model",
                args=("serve", spec.ref, "--host", host, *listen, *options),
                host=host,
                http_port=http_port,
                grpc_port=grpc_port,
                ready_path="/v2/health/ready",
                log_file=logs / f"{name}.log",
                ref=spec.ref,
            )
        )
    return replicas


def _workers(spec: WorkerSpec, ports: _PortBook, logs: Path, threads: int) -> list[ProcessSpec]:
    host = "127.0.0.1"  # the health route is for the supervisor on this machine
    options: list[str] = []
    if spec.concurrency is not None:
        options += ["--concurrency", str(spec.concurrency)]
    if spec.handler is not None:
        options += ["--handler", spec.handler]
    options += ["--threads", str(threads)]
    workers = []
    for replica in range(1, spec.replicas + 1):
        name = f"worker-{spec.kind}.{replica}"
        port = ports.free(host, name)
        workers.append(
            ProcessSpec(
                name=name,
                service=f"worker-{spec.kind}",
                replica=replica,
                kind="worker",
                args=("worker", spec.kind, *options, "--host", host, "--port", str(port)),
                host=host,
                http_port=port,
                grpc_port=None,
                ready_path="/health",
                log_file=logs / f"{name}.log",
            )
        )
    return workers


def _service_names(models: list[ModelServiceSpec]) -> list[str]:
    """The model name, or ``name-selector`` when two services serve the same model."""
    seen: set[str] = set()
    for index, model in enumerate(models):
        if model.ref in seen:
            raise ConfigError(
                f"services.models.{index}: {model.ref} is declared twice; "
                "one entry with more replicas runs more copies"
            )
        seen.add(model.ref)
    names = Counter(m.ref.partition("@")[0] for m in models)
    result = []
    for model in models:
        name, _, selector = model.ref.partition("@")
        result.append(name if names[name] == 1 else f"{name}-{selector or 'latest'}")
    return result


class _PortBook:
    """Ports given out so far, so that no two processes of the stack get the same one."""

    def __init__(self) -> None:
        self._taken: dict[int, str] = {}

    def fixed(self, setting: str, host: str, port: int) -> int:
        if port == 0:
            return self.free(host, setting)
        if port in self._taken:
            raise ConfigError(f"{setting}: port {port} is also {self._taken[port]}")
        if not _bindable(host, port):
            raise ConfigError(
                f"{setting}: port {port} on {host} is in use; stop what holds it or set "
                "another port in the project file"
            )
        self._taken[port] = setting
        return port

    def free(self, host: str, taker: str) -> int:
        while True:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in self._taken:
                self._taken[port] = taker
                return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: a port in TIME_WAIT after a restart is still usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True

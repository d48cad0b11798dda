"""``aimesh up``, ``status``, ``logs``, ``down`` and ``init``: a whole stack on this machine.

The project file (``aimesh.yaml``) declares the services; ``aimesh up`` runs each as its
own process under a supervisor, and the other commands find that supervisor through the
home folder (``HOME/run/stack.json``), from any terminal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.table import Table

from aimesh.cli._app import (
    check_exposure,
    config_file,
    console,
    handle_errors,
    set_config_file,
    settings,
)
from aimesh.config import Settings, find_config_file, load_settings
from aimesh.errors import ConfigError, Conflict

if TYPE_CHECKING:
    from aimesh.local import StackReport

FileOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="Project file (default: ./aimesh.yaml, or $AIMESH_CONFIG)."),
]


def _settings(file: Path | None) -> Settings:
    if file is not None:
        set_config_file(file)
    return settings()


def _project_file(file: Path | None) -> Path:
    """The project file to run: ``aimesh up`` without one would run nothing the user chose."""
    path = find_config_file(file or config_file())
    if path is None:
        raise ConfigError(
            "no project file: pass -f FILE, or write ./aimesh.yaml with `aimesh init`"
        )
    return path.resolve()


@handle_errors
def up(
    file: FileOption = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d", help="Run in the background; `aimesh down` stops it."),
    ] = False,
    ready_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds each service has to become ready when it starts."),
    ] = 60.0,
) -> None:
    """Start the bus and every service of the project file, each its own process.

    Waits for each to be ready, restarts a service that crashes (with backoff), writes
    each one's log under HOME/logs, and stops them in reverse order on Ctrl-C or
    `aimesh down`, letting requests in flight finish.
    """
    from aimesh.local import (
        STAGES,
        Supervisor,
        clear_leftovers,
        hold_stack_lock,
        plan_stack,
        read_state,
        stack_report,
        start_detached,
    )

    path = _project_file(file)
    config = _settings(path)
    home = config.home_dir
    for service, host in _binds(config):  # before anything starts; each child checks again
        check_exposure(config, host, service, insecure=False)
    if detach:
        # Checked here, so that problems (a running stack, ports in use) are shown, not logged.
        with hold_stack_lock(home):
            asyncio.run(clear_leftovers(home, read_state(home), config))
            plan_stack(config)
        args = ["up", "--file", str(path), "--ready-timeout", f"{ready_timeout:g}"]
        with console.status("starting the stack in the background"):
            start_detached(home, args, timeout_s=ready_timeout * len(STAGES) + 60)
        show_stack(asyncio.run(stack_report(home, settings=config)))
        console.print(
            f"running in the background; its log: {home}/logs/supervisor.log. "
            "`aimesh down` stops it.",
            highlight=False,
        )
        return

    from aimesh.observability import configure_logging

    configure_logging(config.log_level, config.log_format)
    # Readiness polls would log a line each at INFO; the supervisor says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def running(_: object) -> None:
        show_stack(await stack_report(home, settings=config))
        console.print("Ctrl-C (or `aimesh down` elsewhere) stops the stack.")

    supervisor = Supervisor(config, config_file=path, ready_timeout_s=ready_timeout)
    asyncio.run(supervisor.run(on_running=running))


def _binds(config: Settings) -> list[tuple[str, str]]:
    """The services `aimesh up` starts and the address each binds (workers: loopback)."""
    services = config.services
    binds = [
        (name, host)
        for name, enabled, host in (
            ("registry", services.registry, config.registry.host),
            ("lake", services.lake, config.lake.host),
            ("jobs API", services.jobs, config.jobs.host),
            ("the gateway", services.gateway, config.gateway.host),
        )
        if enabled
    ]
    if services.models:
        binds.append(("the model services", config.serving.host))
    return binds


@handle_errors
def status(
    file: FileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show every service and replica: address, health, version served, pid, uptime."""
    from aimesh.local import stack_report

    config = _settings(file)
    report = asyncio.run(stack_report(config.home_dir, settings=config))
    if as_json:
        typer.echo(msgspec.json.encode(report).decode())
    else:
        show_stack(report)


def show_stack(report: StackReport) -> None:
    """The stack as a table (or a line saying nothing runs)."""
    stack, home = report.stack, report.home
    if stack is None:
        console.print(f"nothing is running for {home} (start a stack: aimesh up)", highlight=False)
        return
    colors = {"ready": "green", "not ready": "yellow", "down": "red"}
    bus = f" [{colors[report.bus]}]{report.bus}[/]" if report.bus is not None else ""
    table = Table(
        "service", "replica", "kind", "REST", "gRPC", "state", "health", "version",
        "pid", "uptime", "restarts",
        title=f"stack of {home} (supervisor pid {stack.supervisor_pid}, bus {stack.bus_url}{bus})",
    )  # fmt: skip
    for item in report.processes:
        p = item.process
        table.add_row(
            p.service,
            str(p.replica),
            p.kind,
            p.rest_url.removeprefix("http://"),
            p.grpc_address or "-",
            p.state,
            f"[{colors[item.health]}]{item.health}[/]",
            item.version or "-",
            str(p.pid or "-"),
            _duration(item.uptime_s),
            str(p.restarts),
        )
    console.print(table)
    if not report.running:
        console.print(
            f"[yellow]the supervisor (pid {stack.supervisor_pid}) is gone;[/yellow] "
            "`aimesh down` stops what it left running",
            highlight=False,
        )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@handle_errors
def logs(
    service: Annotated[
        str | None,
        typer.Argument(help="A service (fraud), a replica (fraud.2), or supervisor; none: all."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines to show.")] = 50,
    file: Annotated[
        Path | None, typer.Option("--file", help="Project file (to find the home).")
    ] = None,
) -> None:
    """Print the last lines of a service's log (every service's, prefixed, when none given)."""
    from aimesh.local import follow as follow_lines
    from aimesh.local import log_files, read_state, tail_lines

    home = _settings(file).home_dir
    files = log_files(home, service)
    state = read_state(home)
    if service is None and state is not None:
        # The running stack's processes, in start order, not every log the home ever had.
        order = [p.name for p in state.processes]
        files = {name: files[name] for name in order if name in files}
    if not files:
        console.print(f"no logs yet in {home}/logs (start a stack: aimesh up)", highlight=False)
        return
    width = max(len(name) for name in files)

    def show(name: str, line: str) -> None:
        if len(files) == 1:
            typer.echo(line)
        else:
            typer.echo(typer.style(f"{name:<{width}} |", fg="cyan") + f" {line}")

    for name, path in files.items():
        for line in tail_lines(path, lines):
            show(name, line)
    if follow:
        try:
            for name, line in follow_lines(files):
                show(name, line)
        except KeyboardInterrupt:
            return


@handle_errors
def down(
    file: FileOption = None,
    bus: Annotated[bool, typer.Option("--bus", help="Also stop the home's embedded bus.")] = False,
) -> None:
    """Stop the stack of this home in reverse order, letting requests in flight finish."""
    from aimesh.bus import embedded_bus_status, stop_embedded_bus
    from aimesh.local import STAGES, stop_stack
    from aimesh.local.supervisor import STOP_MARGIN_S

    config = _settings(file)
    home = config.home_dir
    per_stage = config.serving.drain_timeout_s + STOP_MARGIN_S
    with console.status("stopping the stack"):
        report = stop_stack(home, timeout_s=per_stage * len(STAGES) + 10, settings=config)
    if report.was_running:
        console.print(
            f"stopped the stack of {home} (supervisor pid {report.supervisor_pid})",
            highlight=False,
        )
    elif report.leftovers:
        console.print(
            f"the supervisor of {home} had died; stopped the {report.leftovers} "
            "process(es) it left running",
            highlight=False,
        )
    else:
        console.print(f"nothing was running for {home}", highlight=False)
    if bus:
        stopped = stop_embedded_bus(config)
        console.print("stopped the embedded bus" if stopped else "no embedded bus was running")
    elif config.bus.url is None and embedded_bus_status(config).running:
        console.print(
            "the embedded bus keeps running (other processes of this home may use it); "
            "`aimesh down --bus` or `aimesh bus stop` stops it",
            style="dim",
        )


@handle_errors
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the project file.")] = Path(
        "aimesh.yaml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter project file (aimesh.yaml)."""
    from aimesh.local import STARTER_PROJECT_FILE

    if path.exists() and not force:
        raise Conflict(f"{path} exists; --force overwrites it", path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER_PROJECT_FILE)
    load_settings(path)  # a starter that does not load would be a bug: fail loudly here
    console.print(f"wrote {path}; declare your model services in it, then `aimesh up`")
    if path.resolve() != Path(os.getcwd(), "aimesh.yaml").resolve():
        console.print(f"(other commands find it with -f {path})", style="dim", highlight=False)

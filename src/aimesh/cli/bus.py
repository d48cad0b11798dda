"""``aimesh bus``: start, inspect and stop the bus of this home."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
import typer

from aimesh.bus import (
    BusStatus,
    declare_topology,
    embedded_bus_status,
    ensure_bus,
    open_bus,
    redact_url,
    stop_embedded_bus,
)
from aimesh.cli._app import console, handle_errors, settings
from aimesh.config import Settings

app = typer.Typer(
    help="The NATS bus: the embedded server of this home (the default), or the one set in "
    "bus.url. The embedded server keeps running after the command that started it exits; "
    "`aimesh bus stop` stops it.",
    no_args_is_help=True,
)


@app.command()
@handle_errors
def start(
    topology: Annotated[
        bool,
        typer.Option(
            "--topology/--no-topology",
            help="Also create the streams and KV buckets the platform needs (idempotent).",
        ),
    ] = True,
) -> None:
    """Start the home's embedded bus unless it already runs, and print its URL.

    The embedded server runs detached, with its JetStream data under HOME/bus.

    With bus.url set (AIMESH_BUS__URL), nothing is started: the configured bus is checked.
    """
    cfg = settings()
    ensure_bus(cfg)
    if topology:
        asyncio.run(_declare(cfg))
    _print_status(embedded_bus_status(cfg))
    if cfg.bus.url is None:
        console.print("stop it with [bold]aimesh bus stop[/bold]", style="dim")


async def _declare(cfg: Settings) -> None:
    async with await open_bus(cfg, name="aimesh-cli") as bus:
        await declare_topology(bus)


@app.command()
@handle_errors
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the status as one JSON object.")
    ] = False,
) -> None:
    """Show which bus this home uses, whether it answers, and the embedded server's pid.

    Also whether clients authenticate, and how (token, user/password, nkey, creds, tls):
    never the secret itself.
    """
    state = embedded_bus_status(settings())
    if as_json:
        typer.echo(msgspec.json.encode(state).decode())
    else:
        _print_status(state)


@app.command()
@handle_errors
def stop() -> None:
    """Stop the home's embedded bus (SIGTERM, then SIGKILL if it does not exit in time).

    A bus set in bus.url is never stopped: it is not aimesh's. While a stack runs on the
    home (`aimesh up`), its supervisor starts the bus again: `aimesh down --bus` stops both.

    Stopping when nothing runs is not an error.
    """
    from aimesh.local import supervisor_running

    cfg = settings()
    if stop_embedded_bus(cfg):
        console.print(f"stopped the embedded bus of {cfg.home_dir}", highlight=False)
        if supervisor_running(cfg.home_dir):
            console.print(
                "a stack runs on this home: its supervisor starts the bus again; "
                "`aimesh down --bus` stops both",
                style="yellow",
            )
    else:
        console.print("no embedded bus was running for this home")
    if cfg.bus.url:
        shown = redact_url(cfg.bus.url)
        console.print(f"the configured bus at {shown} is not aimesh's to stop", style="dim")


def _print_status(state: BusStatus) -> None:
    if state.mode == "external":
        health = "[green]answers[/green]" if state.running else "[red]does not answer[/red]"
        console.print(f"configured bus {state.url} {health}", highlight=False)
        console.print(f"  credentials: {_credentials(state)}", highlight=False)
        return
    if not state.running:
        console.print("no embedded bus is running for this home (start: aimesh bus start)")
        return
    console.print(f"embedded bus [green]running[/green] at [bold]{state.url}[/bold]")
    console.print(f"  pid {state.pid}, started {state.started:%Y-%m-%d %H:%M:%S %Z}")
    console.print(f"  credentials: {_credentials(state)}", highlight=False)
    console.print(f"  monitoring {state.monitor_url}")
    console.print(f"  data {state.folder}, log {state.log_file}", highlight=False)


def _credentials(state: BusStatus) -> str:
    sent = ", ".join(state.credentials) or "none"
    if state.auth_required is None:
        return f"{sent} (server not asked)"
    if state.auth_required:
        return f"on ({sent})"
    return f"[red]off[/red]: the server lets any local client in (sent: {sent})"

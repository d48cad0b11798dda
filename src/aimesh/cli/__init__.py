"""The ``aimesh`` command line: one module per command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aimesh.cli._app import set_config_file

app = typer.Typer(
    name="aimesh",
    help="Run AI systems as microservices, on one machine or at scale.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Project file (default: ./aimesh.yaml if present, or $AIMESH_CONFIG).",
        ),
    ] = None,
) -> None:
    set_config_file(config_file)


def _register() -> None:
    # Imported here so that `aimesh --help` stays quick and each group stays in its own module.
    from aimesh.cli import (
        bus,
        controller,
        demo,
        doctor,
        gateway,
        jobs,
        keys,
        lake,
        local,
        models,
        registry,
        rollout,
        serve,
        train,
    )

    app.add_typer(models.app, name="models")
    app.add_typer(registry.app, name="registry")
    app.add_typer(keys.app, name="keys")
    app.add_typer(bus.app, name="bus")
    app.add_typer(gateway.app, name="gateway")
    app.add_typer(jobs.app, name="jobs")
    app.add_typer(lake.app, name="lake")
    app.add_typer(rollout.app, name="rollout")
    app.command("controller")(controller.controller)
    app.command("breakers")(controller.breakers)
    app.command("worker")(jobs.worker)
    app.command("serve")(serve.serve)
    app.command("train")(train.train)
    app.add_typer(demo.app, name="demo")
    app.command("doctor")(doctor.doctor)
    for command in (local.up, local.status, local.logs, local.down, local.init):
        app.command()(command)


def main() -> None:
    """Entry point of the ``aimesh`` console script."""
    _register()
    app()


__all__ = ["app", "main"]

"""``aimesh registry``: run the registry as its own service."""

from __future__ import annotations

from typing import Annotated

import typer

from aimesh.cli._app import Insecure, handle_errors, serve_service_app, settings

app = typer.Typer(help="The model registry service.", no_args_is_help=True)


@app.command()
@handle_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: registry.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind (default: registry.port, 8100).")
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Serve the registry's REST API, with OpenAPI docs at /docs."""
    from aimesh.registry.app import create_app

    registry = settings().registry
    serve_service_app(
        "registry",
        create_app,
        host=host or registry.host,
        port=registry.port if port is None else port,
        insecure=insecure,
    )

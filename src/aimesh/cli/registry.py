"""``aimesh registry``: run the registry as its own service."""

from __future__ import annotations

from typing import Annotated

import typer

from aimesh.cli._app import console, handle_errors, settings

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
) -> None:
    """Serve the registry's REST API, with OpenAPI docs at /docs."""
    import uvicorn

    from aimesh.observability import configure_logging
    from aimesh.registry.app import create_app

    config = settings()
    configure_logging(config.log_level, config.log_format)
    bind_host = host or config.registry.host
    bind_port = config.registry.port if port is None else port
    console.print(f"registry on http://{bind_host}:{bind_port}  (docs: /docs)")
    uvicorn.run(
        create_app(config, public_url=f"http://{bind_host}:{bind_port}"),
        host=bind_host,
        port=bind_port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )

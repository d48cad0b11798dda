"""``aimesh gateway``: the single entry point in front of every service."""

from __future__ import annotations

from typing import Annotated

import typer

from aimesh.cli._app import Insecure, check_exposure, console, handle_errors, settings

app = typer.Typer(help="The gateway: routing, auth, limits, aggregation.", no_args_is_help=True)


@app.command()
@handle_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: gateway.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="REST port (default: gateway.port, 8080; 0: any free).")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default: gateway.grpc_port, 8081; 0: any free).")
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Serve the gateway (REST and gRPC) until Ctrl-C; GET /health answers 200 once ready."""
    from aimesh.gateway import serve as run
    from aimesh.observability import configure_logging

    config = settings()
    overrides = {
        key: value
        for key, value in {"host": host, "port": port, "grpc_port": grpc_port}.items()
        if value is not None
    }
    gateway = config.gateway.model_validate({**config.gateway.model_dump(), **overrides})
    config = config.model_copy(update={"gateway": gateway})
    configure_logging(config.log_level, config.log_format)
    check_exposure(config, gateway.host, "the gateway", insecure=insecure)
    console.print(
        f"gateway on http://{gateway.host}:{gateway.port} and grpc {gateway.host}:"
        f"{gateway.grpc_port}  (docs: /docs)",
        highlight=False,
    )
    run(config)

"""``aimesh serve``: one model as a service, over OIP v2 REST and gRPC."""

from __future__ import annotations

from typing import Annotated

import typer

from aimesh.cli._app import Insecure, check_exposure, console, handle_errors, settings


@handle_errors
def serve(
    ref: Annotated[
        str, typer.Argument(help="NAME@ALIAS (followed live), NAME@VERSION, or NAME (latest).")
    ],
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: serving.host).")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="REST port (default 9000; 0: any free).")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default 9001; 0: any free).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="Processes sharing the ports.")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Rows in one model call.")
    ] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option(min=0, help="Longest wait for a batch to fill.")
    ] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="Coalesce concurrent requests.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Native threads per worker (default: serving.threads)."),
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Serve a model over the Open Inference Protocol v2 (REST and gRPC) until Ctrl-C."""
    from aimesh.observability import configure_logging
    from aimesh.serving import ModelRef, WorkerPlan
    from aimesh.serving import serve as run

    config = settings()
    overrides = {
        key: value
        for key, value in {
            "host": host,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "workers": workers,
            "max_batch_size": max_batch_size,
            "max_latency_ms": max_latency_ms,
            "batching": batching,
            "threads": threads,
        }.items()
        if value is not None
    }
    serving = config.serving.model_validate({**config.serving.model_dump(), **overrides})
    config = config.model_copy(update={"serving": serving})
    configure_logging(config.log_level, config.log_format)
    check_exposure(config, serving.host, "the model service", insecure=insecure)
    model = ModelRef.parse(ref)
    console.print(
        f"serving [bold]{model}[/bold] on http://{serving.host}:{serving.http_port} "
        f"and grpc {serving.host}:{serving.grpc_port} with {serving.workers} worker(s)",
        highlight=False,
    )
    run(
        config,
        WorkerPlan(
            ref=model,
            host=serving.host,
            http_port=serving.http_port,
            grpc_port=serving.grpc_port,
            workers=serving.workers,
        ),
    )

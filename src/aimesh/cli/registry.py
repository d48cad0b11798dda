"""``aimesh registry``: run the registry as its own service, and collect its garbage."""

from __future__ import annotations

from typing import Annotated

import typer

from aimesh.cli._app import Insecure, console, handle_errors, serve_service_app, settings

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


@app.command()
@handle_errors
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove artifacts no version uses and abandoned uploads older than registry.gc_grace_s.

    Works on the registry at registry.url when one is set (its admin scope), else on the
    local store. A running registry service also does this on its own
    (registry.gc_interval_s).
    """
    from aimesh.registry import open_registry

    registry = open_registry(settings())
    try:
        report = registry.collect_garbage(dry_run=dry_run)
    finally:
        registry.close()
    if json_out:
        console.print_json(report.model_dump_json())
        return
    verb = "would remove" if dry_run else "removed"
    for found in report.removed:
        console.print(
            f"{verb} {found.kind} {found.name}  {found.size} bytes  "
            f"(unused for {found.age_s:.0f} s)",
            highlight=False,
        )
    freed = "would free" if dry_run else "freed"
    console.print(
        f"{len(report.removed)} file(s), {report.bytes_freed} bytes {freed}; kept "
        f"{report.kept_referenced} artifact(s) in use and {report.kept_young} inside the "
        "grace period",
        highlight=False,
    )

"""``aimesh models``: push, list, show, alias, rollback, archive, history, download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aimesh.cli._app import console, err_console, handle_errors, settings
from aimesh.errors import BusUnavailable, InvalidRequest
from aimesh.registry import (
    Lineage,
    LocalRegistry,
    ModelInfo,
    ModelVersion,
    Registry,
    open_registry,
    push_model,
)

app = typer.Typer(help="Models, versions and aliases in the registry.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def _registry(*, publishes: bool = False) -> Iterator[Registry]:
    """The configured registry; after a change made locally, publish its events on the bus."""
    config = settings()
    registry = open_registry(config)
    try:
        yield registry
        if publishes and isinstance(registry, LocalRegistry):
            from aimesh.registry.outbox import flush_outbox

            try:
                flush_outbox(registry.store, config)
            except BusUnavailable as exc:
                err_console.print(
                    f"[yellow]note:[/yellow] change saved; its event waits for the bus "
                    f"({exc.message})"
                )
    finally:
        registry.close()


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} {item!r} must look like KEY=VALUE")
        pairs[key] = value
    return pairs


def _metrics(values: list[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in _pairs(values, "metric").items():
        try:
            metrics[key] = float(value)
        except ValueError as exc:
            raise InvalidRequest(f"metric {key!r} must be a number, got {value!r}") from exc
    return metrics


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, version or None


@app.command()
@handle_errors
def push(
    name: Annotated[str, typer.Argument(help="Model name (created if new).")],
    path: Annotated[Path, typer.Argument(help="The artifact file.", exists=True, dir_okay=False)],
    framework: Annotated[
        str | None,
        typer.Option(
            help="sklearn, onnx, xgboost, lightgbm, python or pickle (default: by extension)."
        ),
    ] = None,
    alias: Annotated[list[str], typer.Option("--alias", "-a", help="Alias to point at it.")] = [],  # noqa: B006
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    tag: Annotated[list[str], typer.Option(help="KEY=VALUE tag (repeatable).")] = [],  # noqa: B006
    metric: Annotated[list[str], typer.Option(help="KEY=NUMBER metric (repeatable).")] = [],  # noqa: B006
    dataset: Annotated[str | None, typer.Option(help="Lineage: the dataset, e.g. tx@3.")] = None,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Allow a format that runs code when loaded (pickle, joblib, Python): needs "
            "registry.allow_code_artifacts and the admin scope. Recorded with who trusted it.",
        ),
    ] = False,
    trust_type: Annotated[
        list[str],
        typer.Option(
            help="A type a skops file may hold beyond the safe defaults (same policy as --trust)."
        ),
    ] = [],  # noqa: B006
    json_out: JsonFlag = False,
) -> None:
    """Push a model file as the next version of NAME."""
    with _registry(publishes=True) as registry:
        version = push_model(
            registry,
            name,
            path,
            framework=framework,
            aliases=alias,
            description=description,
            tags=_pairs(tag, "tag"),
            metrics=_metrics(metric),
            lineage=Lineage(dataset=dataset),
            trusted=trust,
            trusted_types=trust_type,
        )
    if json_out:
        console.print_json(version.model_dump_json())
        return
    aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
    console.print(
        f"pushed [bold]{version.ref}[/bold]{aliases}  sha256 {version.artifact_sha256[:12]}  "
        f"{_size(version.artifact_size)}"
    )


@app.command("list")
@handle_errors
def list_models(json_out: JsonFlag = False) -> None:
    """List every model."""
    with _registry() as registry:
        models = registry.list_models()
    if json_out:
        console.print_json(json.dumps([m.model_dump(mode="json") for m in models]))
        return
    console.print(models_table(models))


@app.command()
@handle_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME, or NAME@VERSION / NAME@ALIAS for one version.")],
    json_out: JsonFlag = False,
) -> None:
    """Show a model's versions (sha256, metrics, aliases), or one version in full."""
    name, version_ref = _split_ref(ref)
    with _registry() as registry:
        if version_ref is not None:
            version = registry.get_version(name, version_ref)
            if json_out:
                console.print_json(version.model_dump_json())
            else:
                _print_version(version)
            return
        model = registry.get_model(name)
        versions = registry.list_versions(name)
    if json_out:
        body = {
            "model": model.model_dump(mode="json"),
            "versions": [v.model_dump(mode="json") for v in versions],
        }
        console.print_json(json.dumps(body))
        return
    console.print(f"[bold]{model.name}[/bold]  {model.description}")
    if model.tags:
        console.print("tags: " + ", ".join(f"{k}={v}" for k, v in model.tags.items()))
    console.print(versions_table(versions))
    live = [v for v in versions if not v.archived]
    if live:
        _print_version(live[-1])


@app.command()
@handle_errors
def alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. champion.")],
    version: Annotated[int | None, typer.Argument(help="Version to point at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
) -> None:
    """Point ALIAS at VERSION (atomically, recorded with who and when), or --delete it."""
    with _registry(publishes=True) as registry:
        if delete:
            registry.delete_alias(name, alias_name)
            console.print(f"removed {name}@{alias_name}")
            return
        if version is None:
            raise InvalidRequest("give the VERSION to point the alias at, or --delete")
        moved = registry.set_alias(name, alias_name, version)
    console.print(f"{name}@{moved.name} -> version {moved.version}")


@app.command()
@handle_errors
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[
        str, typer.Option("--alias", "-a", metavar="ALIAS", help="The alias to move back.")
    ] = "champion",
    from_version: Annotated[
        int | None,
        typer.Option(
            "--from", min=1, help="Only if the alias points at this version now (else refused)."
        ),
    ] = None,
) -> None:
    """Move ALIAS back to the version it held before (atomically, recorded); services and
    gateways following it switch within a second. Again: one more move back."""
    with _registry(publishes=True) as registry:
        moved = registry.rollback_alias(name, alias_name, from_version=from_version)
    console.print(
        f"{name}@{moved.name} -> version {moved.version} (rolled back from {moved.previous})"
    )


@app.command()
@handle_errors
def archive(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to archive.")],
) -> None:
    """Archive a version no alias points at."""
    with _registry(publishes=True) as registry:
        archived = registry.archive_version(name, version)
    console.print(f"archived {archived.ref}")


@app.command()
@handle_errors
def history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many changes.")] = 50,
) -> None:
    """Show who changed what, newest first (alias moves, new versions, archives)."""
    with _registry() as registry:
        entries = registry.history(name, limit=limit)
    table = Table("when", "change", "version", "alias", "by", title=f"history of {name}")
    for e in entries:
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{e.kind} {e.action}",
            str(e.version or ""),
            e.alias or "",
            e.actor,
        )
    console.print(table)


@app.command()
@handle_errors
def download(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS (default: latest).")],
    dest: Annotated[Path, typer.Argument(help="File to write.")],
) -> None:
    """Download a version's artifact, verified against its sha256."""
    name, version_ref = _split_ref(ref)
    with _registry() as registry:
        version = registry.download_artifact(name, version_ref or "latest", dest)
    console.print(f"wrote {version.ref} to {dest} (sha256 {version.artifact_sha256[:12]} verified)")


# -- rendering -------------------------------------------------------------------------------


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def models_table(models: list[ModelInfo]) -> Table:
    """A table of models: name, latest version, aliases, last change."""
    table = Table("model", "latest", "aliases", "updated", "description", title="models")
    for m in models:
        table.add_row(
            m.name,
            str(m.latest_version or "-"),
            ", ".join(f"{a}->{v}" for a, v in m.aliases.items()),
            m.updated_at.strftime("%Y-%m-%d %H:%M"),
            m.description,
        )
    return table


def versions_table(versions: list[ModelVersion]) -> Table:
    """A table of versions: number, aliases, framework, sha256, size, metrics, trust, created."""
    table = Table(
        "version",
        "aliases",
        "framework",
        "sha256",
        "size",
        "metrics",
        "trusted",
        "created",
        title="versions",
    )
    for v in versions:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        table.add_row(
            f"[dim]{v.version} (archived)[/dim]" if v.archived else str(v.version),
            ", ".join(v.aliases),
            v.framework,
            v.artifact_sha256[:12],
            _size(v.artifact_size),
            metrics,
            "[yellow]yes[/yellow]" if v.trusted else "no",
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def _print_version(v: ModelVersion) -> None:
    console.print(f"\n[bold]{v.ref}[/bold]  aliases: {', '.join(v.aliases) or '-'}")
    console.print(f"  framework  {v.framework}")
    console.print(f"  sha256     {v.artifact_sha256}  ({_size(v.artifact_size)})")
    console.print(f"  created    {v.created_at:%Y-%m-%d %H:%M:%S} by {v.created_by}")
    trust = "[yellow]yes: code in this artifact runs when it loads[/yellow]" if v.trusted else "no"
    console.print(f"  trusted    {trust}")
    if v.trusted_types:
        console.print(f"  trusted types  {', '.join(v.trusted_types)}")
    if v.trusted_by:
        console.print(f"  trusted by {v.trusted_by}")
    if v.signature:
        for kind, specs in (("input", v.signature.inputs), ("output", v.signature.outputs)):
            for s in specs:
                console.print(f"  {kind:<10} {s.name} {s.datatype} {s.shape}")
    if v.metrics:
        console.print(
            "  metrics    " + ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        )
    lineage = v.lineage.model_dump(exclude_defaults=True)
    if lineage:
        console.print(f"  lineage    {json.dumps(lineage)}")

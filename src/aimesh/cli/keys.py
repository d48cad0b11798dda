"""``aimesh keys``: make, list and revoke the API keys every service checks.

Keys live in the registry database as sha256 digests (the key is printed once, when made);
with ``registry.url`` the commands go through the registry service, which needs the
``admin`` scope (the service credential of this home has it).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from aimesh.cli._app import console, err_console, handle_errors
from aimesh.cli.models import _registry
from aimesh.errors import InvalidRequest

app = typer.Typer(
    help="API keys (scopes read, infer, write, admin): services require one whenever any "
    "key exists.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
@handle_errors
def create(
    name: Annotated[str, typer.Argument(help="Who holds the key (unique among active keys).")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help="read, infer, write or admin; repeat for several (write includes read and "
            "infer; admin includes everything).",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Make a random key; print it once (only its digest is stored)."""
    from aimesh.auth import SCOPES
    from aimesh.registry import KeyCreate

    unknown = sorted(set(scope) - set(SCOPES))
    if unknown:
        raise InvalidRequest(
            f"unknown scope {unknown[0]!r}: use one of {', '.join(SCOPES)}", scope=unknown[0]
        )
    with _registry(publishes=True) as registry:
        made = registry.create_key(KeyCreate.model_validate({"name": name, "scopes": scope}))
    if as_json:
        print(json.dumps({"key": made.key, **made.info.model_dump(mode="json")}))
        return
    console.print(made.key, highlight=False, soft_wrap=True)
    err_console.print(
        f"key {made.info.name!r} ({', '.join(made.info.scopes)}): copy it now, it is not "
        "stored and cannot be shown again",
        highlight=False,
    )


@app.command("list")
@handle_errors
def list_keys(as_json: JsonFlag = False) -> None:
    """Every key: name, scopes, when and by whom made, when revoked (never the key)."""
    with _registry() as registry:
        keys = registry.list_keys()
    if as_json:
        print(json.dumps([k.model_dump(mode="json") for k in keys]))
        return
    table = Table("name", "scopes", "created", "by", "revoked", title="API keys")
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M} by {k.revoked_by}" if k.revoked_at else ""
        table.add_row(
            k.name,
            ", ".join(k.scopes),
            f"{k.created_at:%Y-%m-%d %H:%M}",
            k.created_by,
            revoked,
            style="dim" if k.revoked_at else None,
        )
    console.print(table)
    if not keys:
        err_console.print("no keys: services accept every caller on this machine (loopback)")


@app.command()
@handle_errors
def revoke(name: Annotated[str, typer.Argument(help="The key to revoke.")]) -> None:
    """Revoke a key: every service refuses it once it hears of it (seconds)."""
    with _registry(publishes=True) as registry:
        info = registry.revoke_key(name)
    console.print(f"revoked key {info.name!r}", highlight=False)


@app.command("hash")
def hash_key(
    key: Annotated[str, typer.Argument(help="A key to configure under auth.keys.")],
) -> None:
    """Print the sha256 of KEY, for auth.keys[].sha256 in aimesh.yaml."""
    from aimesh.auth import hash_key as digest

    console.print(digest(key), highlight=False, soft_wrap=True)

"""``aimesh doctor``: what this home exposes, and how to close it.

Reads the settings (defaults < aimesh.yaml < environment), the key store, the home folder and
its secrets, and judges each with the fix beside it: where services bind and whether they
check keys, the trust policy for code-running artifacts, the browser and host allow-lists,
the bus's credentials, file permissions, native thread caps, webhook and trainer allow-lists.
Nothing is changed. The exit code is 1 when anything is exposed (a service answering the
network without keys), so scripts and CI can gate on it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

from aimesh.cli._app import console, err_console, handle_errors, settings
from aimesh.config import Settings

Level = Literal["ok", "note", "warn", "exposed"]
_STYLE: dict[Level, str] = {"ok": "green", "note": "cyan", "warn": "yellow", "exposed": "bold red"}
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Finding:
    """One thing checked: how it stands, what was found, and what to do about it."""

    area: str
    level: Level
    found: str
    fix: str = ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (the rule the services' bind check uses)."""
    from aimesh.rest import is_loopback as loopback  # imported late: `aimesh --help` stays quick

    return loopback(host)


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def key_count(config: Settings) -> tuple[int, str]:
    """Active API keys (the store's and ``auth.keys``), and where they were counted."""
    from aimesh.cli.models import _registry

    static = len(config.auth.keys)
    try:
        with _registry() as registry:
            stored = sum(1 for k in registry.list_keys() if k.revoked_at is None)
    except Exception as exc:  # the store may be remote and down: say so, count what we can
        return static, f"the key store could not be read ({type(exc).__name__})"
    return stored + static, ""


def check_keys(config: Settings, keys: int, problem: str) -> list[Finding]:
    if problem:
        return [Finding("keys", "warn", problem, "check registry.url / registry.api_key")]
    if keys:
        return [Finding("keys", "ok", f"{keys} active API key(s): every service checks them")]
    return [
        Finding(
            "keys",
            "note",
            "no API key: services bind loopback only and every local caller is the operator",
            "`aimesh keys create NAME --scope admin` to require keys on every port",
        )
    ]


def check_binds(config: Settings, keys: int) -> list[Finding]:
    binds = {
        "registry": config.registry.host,
        "lake": config.lake.host,
        "jobs": config.jobs.host,
        "a model service": config.serving.host,
        "gateway": config.gateway.host,
    }
    found = []
    for service, host in binds.items():
        if is_loopback(host):
            found.append(Finding("bind", "ok", f"{service} binds {host} (this machine only)"))
        elif keys:
            found.append(Finding("bind", "ok", f"{service} binds {host}; keys required"))
        elif config.auth.insecure:
            found.append(
                Finding(
                    "bind",
                    "exposed",
                    f"{service} binds {host} with no API key (accepted by auth.insecure): "
                    "anyone who reaches it may use it",
                    "`aimesh keys create NAME --scope admin`, or bind 127.0.0.1",
                )
            )
        else:
            found.append(
                Finding(
                    "bind",
                    "warn",
                    f"{service} is set to bind {host} with no API key: it will refuse to start",
                    "`aimesh keys create NAME --scope admin`, or bind 127.0.0.1",
                )
            )
    if config.auth.insecure:
        found.append(
            Finding(
                "bind",
                "warn",
                "auth.insecure is on: keyless services may bind beyond loopback",
                "remove auth.insecure from aimesh.yaml",
            )
        )
    return found


def check_browser(config: Settings) -> list[Finding]:
    found = []
    if "*" in config.auth.allowed_origins:
        found.append(
            Finding(
                "browser",
                "warn",
                "auth.allowed_origins has '*': any web page may send changes with the "
                "user's access",
                "list the origins of your own pages instead",
            )
        )
    else:
        origins = ", ".join(config.auth.allowed_origins) or "none"
        said = f"changes from web pages refused (allowed: {origins})"
        found.append(Finding("browser", "ok", said))
    if "*" in config.auth.allowed_hosts:
        found.append(
            Finding(
                "browser",
                "warn",
                "auth.allowed_hosts has '*': DNS rebinding is not stopped",
                "list the names clients use instead",
            )
        )
    return found


def check_trust(config: Settings) -> list[Finding]:
    if config.registry.allow_code_artifacts:
        return [
            Finding(
                "trust",
                "warn",
                "registry.allow_code_artifacts is on: an admin may register pickle/Python "
                "artifacts, which run code in every model service that loads them",
                "turn it off unless you need such formats; prefer skops, ONNX, native boosters",
            )
        ]
    return [Finding("trust", "ok", "code-running artifacts (pickle, joblib, Python) are refused")]


def check_bus(config: Settings) -> list[Finding]:
    from aimesh.bus import embedded_bus_status
    from aimesh.bus.credentials import TOKEN_FILE

    bus = config.bus
    status = embedded_bus_status(config)
    if bus.url is None:
        if status.running and status.auth_required is False:
            return [
                Finding(
                    "bus",
                    "exposed",
                    "the running embedded bus takes clients without credentials",
                    "`aimesh bus stop`: the next start makes a token",
                )
            ]
        token = config.bus_dir / TOKEN_FILE
        mode = _mode(token)
        if mode is not None and mode & 0o077:
            return [
                Finding(
                    "bus",
                    "warn",
                    f"the bus token is readable by others ({oct(mode)})",
                    f"chmod 600 {token}",
                )
            ]
        return [Finding("bus", "ok", "embedded; clients need its token (HOME/bus, 0600)")]
    found = []
    if not status.credentials:
        found.append(
            Finding(
                "bus",
                "warn",
                f"{status.url} is used without credentials",
                "set bus.creds_file, bus.nkey_seed_file, bus.token or bus.user/password",
            )
        )
    else:
        found.append(
            Finding("bus", "ok", f"{status.url} with credentials ({', '.join(status.credentials)})")
        )
    hosts = [part.rsplit("@", 1)[-1].rsplit(":", 1)[0] for part in _hosts(bus.url)]
    tls = bus.url.startswith("tls://") or bus.tls_ca_file is not None
    if not tls and not all(is_loopback(h) for h in hosts):
        found.append(
            Finding(
                "bus",
                "warn",
                f"{status.url} is not TLS: jobs, inputs and results cross the network in clear",
                "use tls:// and bus.tls_ca_file",
            )
        )
    return found


def _hosts(url: str) -> list[str]:
    """``user@host:port`` of each server in a NATS URL list (``nats://a:4222,nats://b:4222``)."""
    return [u.split("://", 1)[-1].split("/", 1)[0] for u in url.split(",") if u.strip()]


def check_files(config: Settings) -> list[Finding]:
    from aimesh.auth import SERVICE_KEY_FILE

    home = config.home_dir
    mode = _mode(home)
    if mode is None:
        return [Finding("files", "ok", f"{home} does not exist yet (made 0700)")]
    found = []
    if mode & 0o077:
        found.append(
            Finding(
                "files", "warn", f"{home} is {oct(mode)}: others may read it", f"chmod 700 {home}"
            )
        )
    else:
        found.append(Finding("files", "ok", f"{home} is private (0700)"))
    from aimesh.bus.credentials import TOKEN_FILE

    for secret in (home / SERVICE_KEY_FILE, config.bus_dir / TOKEN_FILE):
        secret_mode = _mode(secret)
        if secret_mode is not None and secret_mode & 0o077:
            found.append(
                Finding(
                    "files",
                    "warn",
                    f"{secret} is {oct(secret_mode)}: others may read it",
                    f"chmod 600 {secret}",
                )
            )
    return found


def check_threads(config: Settings) -> list[Finding]:
    cores = os.cpu_count() or 1
    exported = [f"{v}={os.environ[v]}" for v in _THREAD_VARIABLES if v in os.environ]
    serving = config.serving.threads
    said = (
        f"model services use {serving} native thread(s) per process (of {cores} core(s)); "
        "job workers share the cores (aimesh up divides them)"
    )
    found = [Finding("threads", "ok", said)]
    if exported:
        found.append(
            Finding(
                "threads",
                "note",
                f"exported in this shell: {', '.join(exported)}",
                "not needed: aimesh caps native thread pools itself (serving.threads overrides)",
            )
        )
    return found


def check_outbound(config: Settings) -> list[Finding]:
    allowed = config.jobs.webhook_allow
    if not allowed:
        return [Finding("webhooks", "ok", "webhooks go to public addresses only")]
    broad = [a for a in allowed if a.endswith(("/0", "/8")) or a in {"*", "localhost"}]
    level: Level = "warn" if broad else "note"
    return [
        Finding(
            "webhooks",
            level,
            f"webhooks may also reach {', '.join(allowed)}",
            "narrow jobs.webhook_allow to the receivers you run" if broad else "",
        )
    ]


def check_training(config: Settings) -> list[Finding]:
    extra = config.training.allowed_trainers
    if not extra:
        return [Finding("training", "ok", "trainers: scikit-learn, XGBoost, LightGBM estimators")]
    return [Finding("training", "note", f"trainers also allowed: {', '.join(extra)}")]


def diagnose(config: Settings) -> list[Finding]:
    """Every finding for ``config``, in the order a reader fixes them."""
    keys, problem = key_count(config)
    return [
        *check_keys(config, keys, problem),
        *check_binds(config, keys),
        *check_browser(config),
        *check_trust(config),
        *check_bus(config),
        *check_files(config),
        *check_threads(config),
        *check_outbound(config),
        *check_training(config),
    ]


@handle_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What this home exposes (binds, keys, trust, bus, files, threads), each with its fix.

    Exits 1 when a service would answer the network without keys.
    """
    found = diagnose(settings())
    if as_json:
        print(json.dumps([asdict(f) for f in found]))
    else:
        table = Table("area", "state", "found", "fix", title="aimesh doctor")
        for f in found:
            table.add_row(
                f.area, f"[{_STYLE[f.level]}]{f.level}[/]", escape(f.found), escape(f.fix)
            )
        console.print(table)
        worst = [f for f in found if f.level in ("warn", "exposed")]
        if worst:
            err_console.print(f"{len(worst)} thing(s) to look at", style="yellow")
    if any(f.level == "exposed" for f in found):
        raise typer.Exit(1)

"""What every command shares: loading settings once, and turning errors into one red line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from aimesh._private_files import ensure_private_dir
from aimesh.config import Settings, load_settings
from aimesh.errors import AimeshError, ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

P = ParamSpec("P")
R = TypeVar("R")

# Tables stay readable when output goes to a file or a pipe (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

_state: dict[str, Path | None] = {"config_file": None}

Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Bind a non-loopback address although no API key exists (warns at every start).",
    ),
]
"""The option of every serving command that accepts an exposed, keyless bind."""

ProbeHost = Annotated[str, typer.Option(help="Address of --port's health and metrics routes.")]
"""The bind of an API-less process's health and metrics (a worker, the controller)."""
ProbePort = Annotated[
    int | None,
    typer.Option(
        min=0, max=65535, help="Serve /health and /metrics on this port (0: any free one)."
    ),
]
"""Its port (unset: no health and metrics served)."""


def set_config_file(path: Path | None) -> None:
    """Remember the project file given with the global ``-f`` option."""
    _state["config_file"] = path


def settings() -> Settings:
    """The settings for this invocation: defaults < project file < environment.

    The home folder is made (or tightened to) 0700 here, before any command writes to it:
    it holds the bus's token, the registry database and the logs.
    """
    loaded = load_settings(_state["config_file"])
    try:
        ensure_private_dir(loaded.home_dir)
    except OSError as exc:
        raise ConfigError(f"cannot make the home folder {loaded.home_dir}: {exc}") from exc
    return loaded


def config_file() -> Path | None:
    """The project file given with the global ``-f`` option, if any."""
    return _state["config_file"]


def fail(
    message: str,
    code: str | None = None,
    problems: list[str] | None = None,
    hint: str | None = None,
) -> typer.Exit:
    """Print one red line (one per problem, when given) and return the exit to raise.

    Lines of ``message`` after its first are context (a log's tail): printed plain, as is
    ``hint`` (what to do about the problems) after them.
    """
    suffix = f" [dim]({code})[/dim]" if code else ""
    # Escaped, since messages quote user input that may hold [brackets]; unwrapped, so that
    # each problem stays one line for grep.
    if problems:
        for index, problem in enumerate(problems):
            end = suffix if index == len(problems) - 1 else ""
            err_console.print(
                f"[red]error:[/red] {escape(problem)}{end}", highlight=False, soft_wrap=True
            )
        if hint:
            err_console.print(escape(hint), highlight=False, soft_wrap=True)
        return typer.Exit(1)
    first, *context = message.splitlines() or [message]
    err_console.print(f"[red]error:[/red] {escape(first)}{suffix}", highlight=False, soft_wrap=True)
    for line in context:
        err_console.print(escape(line), highlight=False, soft_wrap=True)
    return typer.Exit(1)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an :class:`AimeshError` into one red line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except AimeshError as exc:
            problems = exc.details.get("problems")
            listed = problems if isinstance(problems, list) else None
            hint = exc.details.get("hint")
            raise fail(
                exc.message, exc.code, listed, hint if isinstance(hint, str) else None
            ) from exc

    return wrapper


def check_exposure(config: Settings, host: str, service: str, *, insecure: bool) -> None:
    """Refuse a keyless non-loopback bind unless ``insecure``; warn when it is accepted."""
    from aimesh.rest import check_bind

    def stored_keys() -> bool:
        from aimesh.registry import KeyWatch

        # Keys made with `aimesh keys create`; unreadable keys count as present (the service
        # then refuses callers until it can read them, never the other way round).
        return KeyWatch(config, events=False).keyring.enabled

    warning = check_bind(config, host, service, insecure=insecure, stored_keys=stored_keys)
    if warning is not None:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def serve_service_app(
    what: str,
    create_app: Callable[..., FastAPI],
    *,
    host: str,
    port: int,
    insecure: bool = False,
    grace_s: int = 10,
) -> None:
    """Serve a platform service's FastAPI app (registry, lake, jobs) until Ctrl-C.

    ``create_app(settings, public_url=...)`` builds it; the URL it is announced at in
    discovery is the one it binds.
    """
    import contextlib
    from collections.abc import Iterator

    import uvicorn

    from aimesh.observability import configure_logging, run_service, stop_on_signals

    class Server(uvicorn.Server):
        """uvicorn without its own signal handling: stop_on_signals decides, as everywhere."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = settings()
    configure_logging(config.log_level, config.log_format)
    check_exposure(config, host, what, insecure=insecure)
    console.print(f"{what} on http://{host}:{port}  (docs: /docs)")
    server = Server(
        uvicorn.Config(
            create_app(config, public_url=f"http://{host}:{port}"),
            host=host,
            port=port,
            log_config=None,
            timeout_graceful_shutdown=grace_s,
        )
    )

    def stop() -> None:
        server.should_exit = True

    async def main() -> None:
        # the app's shutdown (leaving discovery, closing stores) comes after the drain
        stop_on_signals(stop, what=what, grace_s=grace_s + 30)
        await server.serve()

    run_service(main())

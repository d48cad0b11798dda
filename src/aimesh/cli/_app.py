"""What every command shares: loading settings once, and turning errors into one red line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from aimesh.config import Settings, load_settings
from aimesh.errors import AimeshError

P = ParamSpec("P")
R = TypeVar("R")

# Tables stay readable when output goes to a file or a pipe (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

_state: dict[str, Path | None] = {"config_file": None}


def set_config_file(path: Path | None) -> None:
    """Remember the project file given with the global ``-f`` option."""
    _state["config_file"] = path


def settings() -> Settings:
    """The settings for this invocation: defaults < project file < environment."""
    return load_settings(_state["config_file"])


def fail(message: str, code: str | None = None) -> typer.Exit:
    """Print one red line and return the exit to raise."""
    suffix = f" [dim]({code})[/dim]" if code else ""
    err_console.print(f"[red]error:[/red] {message}{suffix}", highlight=False)
    return typer.Exit(1)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an :class:`AimeshError` into one red line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except AimeshError as exc:
            raise fail(exc.message, exc.code) from exc

    return wrapper

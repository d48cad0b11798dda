"""The logs of a stack: one file per process under ``HOME/logs``, read and followed.

Files stay after ``aimesh down``, so logs can be read after a stack stopped or crashed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from aimesh.errors import NotFound
from aimesh.local.state import logs_dir

SUPERVISOR_LOG = "supervisor"


def log_files(home: Path, service: str | None = None) -> dict[str, Path]:
    """The log of each process (by name) of ``service``: a service, a replica, or all.

    ``fraud`` names every replica (``fraud.1``, ``fraud.2``...), ``fraud.2`` one of them,
    ``supervisor`` the log of a detached supervisor.
    """
    folder = logs_dir(home)
    found = {path.stem: path for path in sorted(folder.glob("*.log"))}
    if service is None:
        return {name: path for name, path in found.items() if name != SUPERVISOR_LOG}
    chosen = {
        name: path
        for name, path in found.items()
        if name == service or name.rpartition(".")[0] == service
    }
    if not chosen:
        known = ", ".join(found) or "none yet"
        raise NotFound(f"no log for {service!r} in {folder} (logs: {known})", service=service)
    return chosen


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (read from its end, so big logs cost nothing)."""
    if count <= 0:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            block = 8192
            data = b""
            while end > 0 and data.count(b"\n") <= count:
                start = max(0, end - block)
                handle.seek(start)
                data = handle.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:]


def read_from(path: Path, offset: int) -> list[str]:
    """The lines of ``path`` from byte ``offset`` on (what one run of a process wrote)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def follow(files: dict[str, Path], poll_s: float = 0.2) -> Iterator[tuple[str, str]]:
    """``(name, line)`` for every line appended to ``files`` from now on; never ends.

    A file that shrinks (truncated or replaced) is read again from its start.
    """
    # Sizes taken now, not at the first next(): "from now on" means from this call.
    return _follow(files, {name: _size(path) for name, path in files.items()}, poll_s)


def _follow(
    files: dict[str, Path], offsets: dict[str, int], poll_s: float
) -> Iterator[tuple[str, str]]:
    pending = dict.fromkeys(files, b"")
    while True:
        quiet = True
        for name, path in files.items():
            size = _size(path)
            if size < offsets[name]:
                offsets[name], pending[name] = 0, b""
            if size == offsets[name]:
                continue
            with path.open("rb") as handle:
                handle.seek(offsets[name])
                chunk = handle.read(size - offsets[name])
            offsets[name] += len(chunk)
            # Only whole lines: a writer may be half-way through one.
            *complete, pending[name] = (pending[name] + chunk).split(b"\n")
            for line in complete:
                quiet = False
                yield name, line.decode(errors="replace")
        if quiet:
            time.sleep(poll_s)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0

"""Folders and files only their owner may read: the home, the bus folder, secrets.

- :func:`ensure_private_dir` creates a folder (and the missing ones between it and a given
  top) with mode 0700, and tightens them when they exist with looser modes. Folders above
  the top, which the user made, are never touched.
- :func:`write_secret_file` writes a file atomically with mode 0600: the bytes are in a
  0600 temporary file, fsynced, before it takes the name, so no reader ever sees a file
  half-written or readable by others, even for a moment.
- :func:`read_secret_file` reads one back, tightening a copy left readable by others.

Nothing here logs a file's content.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "SECRET_FILE_MODE",
    "ensure_private_dir",
    "read_secret_file",
    "write_secret_file",
]

_log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600


def ensure_private_dir(folder: Path, *, top: Path | None = None) -> Path:
    """Create ``folder`` 0700 if missing, or tighten it to 0700; return it.

    With ``top`` (an ancestor of ``folder``, e.g. the home), every folder from ``top`` down
    to ``folder`` is created and tightened the same way; folders above ``top`` are created
    if missing with the default mode but never chmod-ed (they are the user's). Without it,
    only ``folder`` itself is made private.
    """
    folder = folder.absolute()
    chain = [folder]
    if top is not None:
        top = top.absolute()
        if folder != top and top not in folder.parents:
            raise ValueError(f"{folder} is not inside {top}")
        chain = [top, *reversed([p for p in folder.parents if top in p.parents]), folder]
        chain = list(dict.fromkeys(chain))  # folder == top gives it once
    chain[0].parent.mkdir(parents=True, exist_ok=True)
    for path in chain:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=PRIVATE_DIR_MODE)
        _tighten(path, PRIVATE_DIR_MODE)
    return folder


def write_secret_file(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from its first byte.

    The parent folder must exist (make it with :func:`ensure_private_dir`). An existing file
    is replaced whole.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, SECRET_FILE_MODE)
    try:
        # The umask may have narrowed the mode further, never widened it; make it exact.
        os.fchmod(fd, SECRET_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_secret_file(path: Path) -> str | None:
    """The text of a secret file (stripped), or ``None`` if it does not exist.

    A file readable by its group or others (copied or restored by hand) is tightened to 0600
    first, with a warning naming the file (never its content).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & 0o077:
        _log.warning("%s was readable by others (mode %o); tightening it to 0600", path, mode)
        _tighten(path, SECRET_FILE_MODE)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _tighten(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)
    except PermissionError:
        # Somebody else's folder (a shared home): say so, do not fail the command over it.
        _log.warning("cannot restrict %s to mode %o: not its owner", path, mode)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

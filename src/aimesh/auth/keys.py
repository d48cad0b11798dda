"""API keys as text: making one, its digest, finding one in headers, the service credential.

A key is ``amk_`` and 43 random URL-safe characters (256 bits from :mod:`secrets`); only its
sha256 is ever stored. The service credential is a key like any other, kept in
``HOME/secrets/service.key`` (0600, in a 0700 folder) by whichever aimesh process needs it
first, or given by the ``auth.service_key`` setting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path

from aimesh.errors import ConfigError, InvalidName

__all__ = [
    "KEY_NAME_PATTERN",
    "KEY_PREFIX",
    "SERVICE_KEY_FILE",
    "check_key_name",
    "hash_key",
    "key_from_headers",
    "new_key",
    "service_key",
]

KEY_PREFIX = "amk_"
"""How every key aimesh makes begins (so that a leaked one is recognisable in a scan)."""

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""A key's name: letters, digits, ``_`` and ``-`` (it is a token of a bus subject)."""
_KEY_NAME = re.compile(KEY_NAME_PATTERN)

SERVICE_KEY_FILE = Path("secrets") / "service.key"
"""Where the service credential lives, under the home."""


def new_key() -> str:
    """A fresh random key: ``amk_`` and 256 bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The sha256 hex digest of a key: what is stored and compared, never the key."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def check_key_name(name: str) -> str:
    """Return ``name`` if it can name a key, else raise :class:`InvalidName`."""
    if not _KEY_NAME.fullmatch(name):
        raise InvalidName(
            f"key name {name!r} must be letters, digits, '_' or '-', starting with a letter "
            "or digit (at most 64)",
            name=name,
        )
    return name


def key_from_headers(api_key: str | None, authorization: str | None) -> str | None:
    """The key presented as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
    if api_key:
        return api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def service_key(home: Path, configured: str | None = None) -> str:
    """The service credential: ``configured`` if given, else the home's, made if absent.

    Made atomically: written whole to a private temporary file, then linked to its name,
    which fails if another process got there first (and then that one's key is read).
    """
    if configured:
        return configured
    path = home / SERVICE_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(new_key() + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"the service credential {path} is empty; delete it to make a new one")
    return key

"""How a client proves itself to the bus, and the embedded bus's own secret.

- The embedded server of a home requires a token, generated once into ``HOME/bus/token``
  (mode 0600, in a 0700 folder) and kept across restarts, so that clients reconnect to a
  restarted server with the token they have. Every aimesh process of the home reads it.
- An external server (``bus.url``) takes what its operator configured: user and password
  (in the settings or the URL), a token, an NKey seed file, a ``.creds`` file, and TLS.

:func:`bus_credentials` picks the right one for a home's settings. No secret is ever logged
or shown: :class:`BusCredentials` prints only which kinds it holds.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from aimesh._private_files import ensure_private_dir, read_secret_file, write_secret_file
from aimesh.config import Settings
from aimesh.errors import ConfigError

__all__ = [
    "TOKEN_FILE",
    "BusCredentials",
    "bus_credentials",
    "embedded_token",
    "home_credentials",
]

TOKEN_FILE = "token"
"""The embedded server's token, in the home's bus folder."""

_TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True, repr=False)
class BusCredentials:
    """What a client sends the bus to be let in, and how it checks the server (TLS)."""

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def kinds(self) -> list[str]:
        """The kinds held: ``token``, ``user/password``, ``nkey``, ``creds``, ``tls``."""
        held = []
        if self.token is not None:
            held.append("token")
        if self.user is not None:
            held.append("user/password")
        if self.nkey_seed_file is not None:
            held.append("nkey")
        if self.creds_file is not None:
            held.append("creds")
        if self.tls_ca_file is not None or self.tls_cert_file is not None:
            held.append("tls")
        return held

    def __repr__(self) -> str:
        return f"BusCredentials({', '.join(self.kinds) or 'none'})"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of these files; ``None`` when no TLS file is set.

        Raises :class:`ConfigError` naming the setting whose file cannot be used.
        """
        if self.tls_ca_file is None and self.tls_cert_file is None:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"bus.tls_ca_file {self.tls_ca_file} is not usable: {exc}") from exc
        if self.tls_cert_file is not None:
            try:
                context.load_cert_chain(
                    str(self.tls_cert_file),
                    str(self.tls_key_file) if self.tls_key_file is not None else None,
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"bus.tls_cert_file {self.tls_cert_file} (with bus.tls_key_file) is not "
                    f"usable: {exc}"
                ) from exc
        return context

    def check_files(self) -> None:
        """Raise :class:`ConfigError` for a seed or creds file that cannot be used."""
        for setting, path in (
            ("bus.nkey_seed_file", self.nkey_seed_file),
            ("bus.creds_file", self.creds_file),
        ):
            if path is None:
                continue
            if not path.is_file():
                raise ConfigError(f"{setting} {path} does not exist", setting=setting)


def bus_credentials(settings: Settings) -> BusCredentials:
    """The credentials the processes of this home use on their bus.

    For an external bus (``bus.url`` set): the ``bus.*`` credential settings. For the
    embedded one: the home's token (none before the server was first started).
    """
    bus = settings.bus
    if bus.url:
        return BusCredentials(
            user=bus.user,
            password=bus.password,
            token=bus.token,
            nkey_seed_file=bus.nkey_seed_file,
            creds_file=bus.creds_file,
            tls_ca_file=bus.tls_ca_file,
            tls_cert_file=bus.tls_cert_file,
            tls_key_file=bus.tls_key_file,
        )
    return home_credentials(settings.home_dir)


def home_credentials(home: Path) -> BusCredentials:
    """The credentials of the embedded bus of ``home`` (its token in ``HOME/bus``).

    For code that knows a home but not its settings (the stack's tools): an external bus's
    credentials are in the settings, so prefer :func:`bus_credentials` where they are known.
    """
    token = read_secret_file(home / "bus" / TOKEN_FILE)
    return BusCredentials(token=SecretStr(token) if token else None)


def embedded_token(bus_dir: Path, *, home: Path | None = None) -> str:
    """The embedded server's token, generated (0600, atomically) the first time.

    Call it under the home's bus lock, so that two processes never make two tokens.
    ``home`` is the top of the folders made private (0700) on the way to ``bus_dir``.
    """
    ensure_private_dir(bus_dir, top=home)
    path = bus_dir / TOKEN_FILE
    token = read_secret_file(path)
    if token:
        return token
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    write_secret_file(path, token + "\n")
    return token

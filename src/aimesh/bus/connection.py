"""A connection to the bus: the nats-py client and its JetStream context.

The first connect is bounded by one deadline and fails with :class:`BusUnavailable`;
once connected, the client reconnects for as long as it takes, so a service outlives a
restart of the bus. (nats-py alone would do neither: ``allow_reconnect=False`` does not stop
its first connect from retrying 60 times, 2 s apart, and ``max_reconnect_attempts=0`` means
"forever".) A server that refuses the credentials fails the first connect at once, with a
message that says so, rather than at the deadline.

:func:`open_bus` is how a process of a home connects: the home's bus (its URL, the
credentials of :func:`~aimesh.bus.credentials.bus_credentials`, the stream limits of its
settings). :func:`connect` is the lower step, for a URL known otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import SecretStr

from aimesh.bus.credentials import BusCredentials, bus_credentials
from aimesh.bus.home import ensure_bus, redact_url
from aimesh.config import BusSettings, Settings
from aimesh.errors import BusUnavailable

__all__ = ["Bus", "connect", "open_bus"]

_log = logging.getLogger(__name__)

# JetStream API calls (create a stream, publish and wait for the ack) are round trips to
# one server: seconds, not minutes, even on a busy laptop.
_JS_API_TIMEOUT_S = 5.0
# Between two attempts to reach a lost server once connected; nats-py's default is 2 s.
# (nats-py types its durations as whole seconds.)
_RECONNECT_WAIT_S = 1
_DRAIN_TIMEOUT_S = 5


class Bus:
    """A live connection to the bus: ``nc`` (the nats-py client) and ``js`` (JetStream).

    Close it with :meth:`close`, or use it as an async context manager.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        url: str,
        *,
        log: _ConnectionLog | None = None,
        limits: BusSettings | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.url = url
        """The server's URL as shown in messages: any password in it is masked."""
        self.limits = limits if limits is not None else BusSettings()
        """The bus settings whose stream and bucket limits :func:`declare_topology` applies."""
        self._log = log

    @property
    def connected(self) -> bool:
        """Whether the client is connected now (``False`` while it reconnects)."""
        return bool(self.nc.is_connected)

    @property
    def reconnections(self) -> int:
        """How many times this connection got the bus back after losing it."""
        return int(self.nc.stats["reconnects"])

    async def close(self) -> None:
        """Send what is still buffered, then close the connection and its subscriptions."""
        if self._log is not None:
            self._log.connected = False  # what follows is no loss of the bus
        if not self.nc.is_closed:
            try:
                await self.nc.close()
            except (OSError, nats.errors.Error) as exc:  # the bus is gone: nothing to flush to
                _log.debug("closing the bus connection: %s", exc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _ConnectionLog:
    """Turns nats-py's callbacks into log lines at levels that match what happened."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connected = False
        self.lost = False
        self.refused = asyncio.Event()
        """Set when the server refused the credentials during the first connect."""

    async def error(self, exc: Exception) -> None:
        if not self.connected and _is_auth_failure(exc):
            self.refused.set()
        # Failed attempts of the first connect are reported by connect() itself, and those
        # of a reconnect by disconnected(): one warning per outage, not one per attempt.
        level = logging.WARNING if self.connected and not self.lost else logging.DEBUG
        _log.log(level, "bus %s: %s", self.url, _reason(exc))

    async def disconnected(self) -> None:
        if self.connected and not self.lost:
            self.lost = True
            _log.warning("lost the bus at %s; reconnecting", self.url)

    async def reconnected(self) -> None:
        self.lost = False
        _log.info("reconnected to the bus at %s", self.url)

    async def closed(self) -> None:
        self.connected = False


async def connect(
    url: str,
    *,
    timeout: float,
    name: str,
    credentials: BusCredentials | None = None,
    limits: BusSettings | None = None,
) -> Bus:
    """Connect to the NATS server at ``url`` within ``timeout`` seconds.

    ``name`` labels the connection in the server's monitoring (``/connz``); ``credentials``
    are presented to the server (a user and password or a token in ``url`` work too);
    ``limits`` are the settings whose stream limits :func:`declare_topology` applies on this
    connection (the defaults when unset). Raises :class:`BusUnavailable`, naming the URL,
    when no server answers in time or the server refuses the credentials; a credential
    file that cannot be used is a :class:`ConfigError`.
    """
    shown = redact_url(url)
    creds = credentials if credentials is not None else BusCredentials()
    creds.check_files()
    tls = creds.ssl_context()
    events = _ConnectionLog(shown)
    nc = NATS()
    attempt = asyncio.ensure_future(
        nc.connect(
            servers=[url],
            name=name,
            # One attempt's own limit; the deadline of them all is the wait below.
            connect_timeout=math.ceil(timeout),
            reconnect_time_wait=_RECONNECT_WAIT_S,
            max_reconnect_attempts=-1,
            drain_timeout=_DRAIN_TIMEOUT_S,
            error_cb=events.error,
            disconnected_cb=events.disconnected,
            reconnected_cb=events.reconnected,
            closed_cb=events.closed,
            user=creds.user,
            password=_reveal(creds.password),
            token=_reveal(creds.token),
            nkeys_seed=str(creds.nkey_seed_file) if creds.nkey_seed_file else None,
            user_credentials=str(creds.creds_file) if creds.creds_file else None,
            tls=tls,
        )
    )
    refused = asyncio.ensure_future(events.refused.wait())
    try:
        done, _pending = await asyncio.wait(
            {attempt, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if attempt in done:
            attempt.result()
        elif refused in done:
            raise _AuthRefused
        else:
            raise TimeoutError
    except _AuthRefused as exc:
        await _abandon(nc, attempt)
        raise BusUnavailable(
            f"the NATS bus at {shown} refused this client: authorization failed "
            f"({_what_was_sent(creds, url)}); check the bus credentials "
            "(bus.user/bus.password, bus.token, bus.nkey_seed_file, bus.creds_file)",
            url=shown,
            reason="authorization_failed",
        ) from exc
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = nc.last_error or exc
        await _abandon(nc, attempt)
        raise BusUnavailable(
            f"cannot reach the NATS bus at {shown} within {timeout:g}s: {_reason(cause)}",
            url=shown,
        ) from exc
    except BaseException:
        # Cancelled mid-connect: stop the client's tasks before passing the cancellation on.
        await _abandon(nc, attempt)
        raise
    finally:
        refused.cancel()
    events.connected = True
    return Bus(nc, nc.jetstream(timeout=_JS_API_TIMEOUT_S), shown, log=events, limits=limits)


async def open_bus(
    settings: Settings, *, name: str, timeout: float | None = None, url: str | None = None
) -> Bus:
    """Connect to the bus of these settings, starting the home's embedded one if needed.

    The connection presents the home's credentials and carries its stream limits. Without
    ``timeout``, ``bus.connect_timeout_s`` bounds the connect. With ``url`` (what an earlier
    :func:`ensure_bus` returned) nothing is started: a long-running loop that connects
    again after losing the bus finds it there, or waits for whoever watches it to bring it
    back on that address (``aimesh up``), rather than starting one elsewhere.
    """
    if url is None:
        url = await asyncio.to_thread(ensure_bus, settings)
    return await connect(
        url,
        timeout=timeout if timeout is not None else settings.bus.connect_timeout_s,
        name=name,
        credentials=bus_credentials(settings),
        limits=settings.bus,
    )


class _AuthRefused(Exception):
    """The server said the credentials are wrong (or missing)."""


async def _abandon(nc: NATS, attempt: asyncio.Future[None]) -> None:
    """Stop a connect in progress and the client's tasks.

    Waits for the attempt without raising its outcome, so that a cancellation of the caller
    itself still propagates (a retry loop around :func:`connect` must not swallow it).
    """
    attempt.cancel()
    try:
        await asyncio.wait({attempt})
    finally:
        if attempt.done() and not attempt.cancelled():
            attempt.exception()  # retrieved: the error connect() raises reports it
        await nc.close()


def _is_auth_failure(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


def _what_was_sent(creds: BusCredentials, url: str) -> str:
    parts = urlsplit(url)
    kinds = creds.kinds
    if parts.username is not None:
        kinds = [*kinds, "user/password in the URL" if parts.password else "token in the URL"]
    kinds = [k for k in kinds if k != "tls"]
    return "sent: " + ", ".join(kinds) if kinds else "no credentials were given"


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer"
    return str(exc) or type(exc).__name__

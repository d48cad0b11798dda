"""A connection to the bus: the nats-py client and its JetStream context.

The first connect is bounded by one deadline and fails with :class:`BusUnavailable`;
once connected, the client reconnects for as long as it takes, so a service outlives a
restart of the bus. (nats-py alone would do neither: ``allow_reconnect=False`` does not stop
its first connect from retrying 60 times, 2 s apart, and ``max_reconnect_attempts=0`` means
"forever".)
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

from aimesh.bus.home import ensure_bus
from aimesh.config import Settings
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
        self, nc: NATS, js: JetStreamContext, url: str, *, log: _ConnectionLog | None = None
    ) -> None:
        self.nc = nc
        self.js = js
        self.url = url
        """The server's URL as shown in messages: any password in it is masked."""
        self._log = log

    @property
    def connected(self) -> bool:
        """Whether the client is connected now (``False`` while it reconnects)."""
        return bool(self.nc.is_connected)

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

    async def error(self, exc: Exception) -> None:
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


async def connect(url: str, *, timeout: float, name: str) -> Bus:
    """Connect to the NATS server at ``url`` within ``timeout`` seconds.

    ``name`` labels the connection in the server's monitoring (``/connz``). Raises
    :class:`BusUnavailable`, naming the URL, when no server answers in time.
    """
    shown = _redact(url)
    events = _ConnectionLog(shown)
    nc = NATS()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=[url],
                name=name,
                # One attempt's own limit; the deadline of them all is the wait_for below.
                connect_timeout=math.ceil(timeout),
                reconnect_time_wait=_RECONNECT_WAIT_S,
                max_reconnect_attempts=-1,
                drain_timeout=_DRAIN_TIMEOUT_S,
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
                closed_cb=events.closed,
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = nc.last_error or exc
        await nc.close()
        raise BusUnavailable(
            f"cannot reach the NATS bus at {shown} within {timeout:g}s: {_reason(cause)}",
            url=shown,
        ) from exc
    except BaseException:
        # Cancelled mid-connect: stop the client's tasks before passing the cancellation on.
        await nc.close()
        raise
    events.connected = True
    return Bus(nc, nc.jetstream(timeout=_JS_API_TIMEOUT_S), shown, log=events)


async def open_bus(settings: Settings, *, name: str) -> Bus:
    """Connect to the bus of these settings, starting the home's embedded one if needed."""
    url = await asyncio.to_thread(ensure_bus, settings)
    return await connect(url, timeout=settings.bus.connect_timeout_s, name=name)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer"
    return str(exc) or type(exc).__name__


def _redact(url: str) -> str:
    # A URL may carry a password (nats://user:secret@host); errors and logs must not.
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()

"""The supervisor's watch on the bus: bring the home's embedded bus back when it dies.

Who watches the bus: while a stack runs, its supervisor does, whoever started the server
(the supervisor itself through :func:`~aimesh.bus.ensure_bus`, an earlier ``aimesh bus
start``, any other process of the home). When its own connection is lost, it restarts the
home's embedded server through the same :func:`~aimesh.bus.ensure_bus` every process uses
(the home's lock makes them agree on one server), on the same port (``keep_port``): the
stack's services are connected to that address and reconnect by themselves, with no
restart of their own. JetStream's streams and the job records are files in ``HOME/bus``,
so queued jobs survive; the in-memory buckets (discovery, leases) do not, so once the
connection is back the watch declares the topology again, and heartbeats fill discovery
within a beat. A bus set in ``bus.url`` is not aimesh's to restart: the watch only
declares the topology again when it returns. Nothing is restarted once the stack stops.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors

from aimesh.bus import Bus, declare_topology, ensure_bus
from aimesh.config import Settings
from aimesh.errors import AimeshError

log = logging.getLogger("aimesh.local")

POLL_S = 0.25
# The pause between two attempts to restart a bus that would not start.
_MAX_BACKOFF_S = 2.0


class BusWatch:
    """Keeps the stack's bus up and declared, for as long as :meth:`run` runs."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self._embedded = settings.bus.url is None
        self._failing = False

    async def run(self) -> None:
        """Watch until cancelled."""
        declared = self.bus.reconnections
        pause = POLL_S
        while True:
            await asyncio.sleep(pause)
            pause = POLL_S
            if self.bus.connected:
                if self.bus.reconnections != declared:
                    declared = self.bus.reconnections
                    await self._declare()
            elif self._embedded and not await self._restart():
                pause = _MAX_BACKOFF_S

    async def _restart(self) -> bool:
        """Start the embedded bus unless it answers; False if it could not be started."""
        try:
            # A no-op when the server answers (our client is between two reconnect attempts,
            # or another process of the home restarted it first); it logs a restart.
            await asyncio.to_thread(ensure_bus, self.settings, keep_port=True)
        except AimeshError as exc:
            if not self._failing:  # once per outage, not once per attempt
                log.warning(
                    "the bus is gone and cannot be started again (trying every %gs): %s",
                    _MAX_BACKOFF_S,
                    exc.message,
                )
            self._failing = True
            return False
        self._failing = False
        return True

    async def _declare(self) -> None:
        try:
            await declare_topology(self.bus)
        except (AimeshError, nats.errors.Error, TimeoutError) as exc:
            log.warning("the bus is back, but its topology could not be declared: %s", exc)
        else:
            log.info("the bus is back at %s; streams and buckets declared", self.bus.url)

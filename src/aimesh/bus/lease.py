"""Exclusive leases on the bus: one holder of a name at a time, for as long as it lives.

A :class:`Lease` creates its key in the ``aimesh_leases`` KV bucket (a create fails when
the key exists: :class:`LeaseHeld`, naming the holder) and rewrites it every third of
:data:`LEASE_TTL_S`, each time expecting the revision it wrote last. A holder that dies
stops rewriting, and the bucket drops the key a TTL later: its successor may then take it.
A holder whose rewrite finds another revision (the key expired while it was away from
the bus, and someone took it) has *lost* the lease, and must stop what it guarded. On one
machine a dead holder is seen at once: a lease whose holder names this host and a process
that is gone is taken over without waiting for it to lapse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from aimesh.bus.connection import Bus
from aimesh.bus.topology import LEASE_TTL_S, LEASES_BUCKET
from aimesh.errors import BusUnavailable, LeaseHeld

__all__ = ["Lease"]

log = logging.getLogger("aimesh.bus.lease")


class _Holder(msgspec.Struct, frozen=True):
    host: str
    pid: int
    since: datetime


class Lease:
    """The exclusive hold of ``key`` (a valid KV key), as an async context manager."""

    def __init__(self, bus: Bus, key: str, *, what: str, ttl_s: float = LEASE_TTL_S) -> None:
        self._bus = bus
        self._key = key
        self._what = what
        self._ttl_s = ttl_s
        self._value = msgspec.json.encode(
            _Holder(host=socket.gethostname(), pid=os.getpid(), since=datetime.now(UTC))
        )
        self._kv: KeyValue | None = None
        self._revision: int | None = None
        self._renewing: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        """Set when another holder has the key: stop what the lease guards."""

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def acquire(self) -> None:
        """Take the lease, and keep it renewed; :class:`LeaseHeld` if another holds it."""
        try:
            self._kv = kv = await self._bus.js.key_value(LEASES_BUCKET)
            try:
                self._revision = await kv.create(self._key, self._value)
            except nats.js.errors.KeyWrongLastSequenceError:
                holder, revision = await self._holder(kv)
                if holder is None or revision is None or not _dead_here(holder):
                    raise LeaseHeld(self._what, _describe(holder)) from None
                log.info("taking over the lease of %s from dead %s", self._what, _describe(holder))
                try:
                    self._revision = await kv.update(self._key, self._value, last=revision)
                except nats.js.errors.KeyWrongLastSequenceError:  # another was quicker
                    raise LeaseHeld(self._what, _describe((await self._holder(kv))[0])) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"cannot take the lease of {self._what}: {exc}") from exc
        self._renewing = asyncio.create_task(self._renew(kv), name=f"lease-{self._key}")

    async def release(self) -> None:
        """Stop renewing, and free the key (if it is still this holder's)."""
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
            self._renewing = None
        kv, revision = self._kv, self._revision
        if (
            kv is not None
            and revision is not None
            and not self.lost.is_set()
            and self._bus.connected
        ):
            try:
                await kv.delete(self._key, last=revision)
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("freeing the lease of %s: %s", self._what, exc)  # it expires anyway
        self._revision = None

    async def _holder(self, kv: KeyValue) -> tuple[_Holder | None, int | None]:
        """Who holds the key (None if it cannot be told), and the revision that says so."""
        try:
            entry = await kv.get(self._key)
            return msgspec.json.decode(entry.value or b"", type=_Holder), entry.revision
        except nats.js.errors.KeyNotFoundError:
            return None, None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None, None

    async def _renew(self, kv: KeyValue) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                self._revision = await kv.update(self._key, self._value, last=self._revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                log.error("lost the lease of %s: another process holds it now", self._what)
                self.lost.set()
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("renewing the lease of %s failed (trying again): %s", self._what, exc)


def _describe(holder: _Holder | None) -> str:
    """A holder as a user would want to hear of it."""
    if holder is None:
        return "another process"
    return f"process {holder.pid} on {holder.host} since {holder.since:%Y-%m-%d %H:%M:%S} UTC"


def _dead_here(holder: _Holder) -> bool:
    """Whether ``holder`` was a process of this machine that has ended."""
    if holder.host != socket.gethostname():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False

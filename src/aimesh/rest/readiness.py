"""Readiness: whether a service can do its work now, judged by what it cannot work without.

Liveness and readiness differ on purpose. A service whose bus, database or lake store is
gone stays live (``/health/live``, ``/v2/health/live``: the process answers, and restarting
it would not bring the dependency back) but is not ready (``/health``,
``/v2/health/ready``: 503) until the dependency returns, so that supervisors, load
balancers and ``aimesh status`` see the truth instead of a service that only fails its
requests. Each service names its dependencies once (:meth:`Readiness.require`); every
route that reports readiness asks the same object.

A check is a callable that returns ``None`` when the dependency is usable and a short
reason when it is not. In-memory checks (is the bus connection up?) run on the event loop;
checks that do I/O (a database round trip, listing the lake's root) are declared
``blocking`` and run in a thread, at most one at a time per dependency, bounded by
``timeout_s``: a probe never waits longer, and a hung database never gathers a thread per
probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from aimesh.bus import Bus
from aimesh.errors import AimeshError

__all__ = ["Check", "Readiness", "ReadinessReport", "bus_check"]

log = logging.getLogger("aimesh.rest")

Check = Callable[[], str | None]
"""``None`` when the dependency is usable; otherwise why not, in a few words."""

OK = "ok"


class ReadinessReport(msgspec.Struct, frozen=True):
    """What a readiness route answers: ``status`` and each dependency's state."""

    status: str
    """``ok``, or ``unavailable`` when a dependency is missing."""
    checks: dict[str, str]
    """Each dependency: ``ok``, or why it cannot be used now."""

    @property
    def ready(self) -> bool:
        """Whether every dependency is usable."""
        return self.status == OK


@dataclass(slots=True)
class _Dependency:
    check: Check
    blocking: bool
    running: asyncio.Future[str | None] | None = None


class Readiness:
    """The dependencies a service needs; :meth:`report` checks them all now."""

    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._dependencies: dict[str, _Dependency] = {}

    def require(self, name: str, check: Check, *, blocking: bool = False) -> None:
        """Need ``name``: ready only while ``check()`` returns ``None``.

        ``blocking``: the check does I/O, so it runs in a thread (see the module docstring).
        Requiring a name again replaces its check (a dependency opened anew at restart).
        """
        self._dependencies[name] = _Dependency(check, blocking)

    async def report(self) -> ReadinessReport:
        """Every dependency checked now (a blocking one that takes too long is not ready)."""
        names = list(self._dependencies)
        results = await asyncio.gather(*(self._check(name) for name in names))
        checks = {name: reason or OK for name, reason in zip(names, results, strict=True)}
        ready = all(reason is None for reason in results)
        return ReadinessReport(OK if ready else "unavailable", checks)

    async def ready(self) -> bool:
        """Whether every dependency is usable now."""
        return (await self.report()).ready

    async def _check(self, name: str) -> str | None:
        dependency = self._dependencies[name]
        if not dependency.blocking:
            return _safely(name, dependency.check)
        if dependency.running is None or dependency.running.done():
            # One check in flight per dependency: later probes share it, even past a timeout.
            dependency.running = asyncio.ensure_future(
                asyncio.to_thread(_safely, name, dependency.check)
            )
        try:
            return await asyncio.wait_for(asyncio.shield(dependency.running), self.timeout_s)
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"


def _safely(name: str, check: Check) -> str | None:
    """The check's answer; an error it raises is its reason (a check never fails a probe)."""
    try:
        return check()
    except AimeshError as exc:
        return exc.message
    except Exception as exc:  # a check's own bug or a driver's error: not ready, and why
        log.debug("readiness check %s failed", name, exc_info=True)
        return f"{type(exc).__name__}: {exc}"


def bus_check(bus: Callable[[], Bus | None]) -> Check:
    """A check that the bus connection ``bus()`` returns is up (not yet connected: not)."""

    def check() -> str | None:
        current = bus()
        if current is None:
            return "not connected yet"
        if not current.connected:
            return f"lost the bus at {current.url}; reconnecting"
        return None

    return check

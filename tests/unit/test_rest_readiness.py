"""Readiness: each dependency checked, a failing one named with its reason, I/O bounded."""

from __future__ import annotations

import asyncio
import threading

from aimesh.errors import StoreUnavailable
from aimesh.rest import Readiness, ReadinessReport


def test_ready_only_while_every_dependency_is_usable() -> None:
    up = {"bus": True}
    readiness = Readiness()
    readiness.require("bus", lambda: None if up["bus"] else "lost the bus")
    readiness.require("store", lambda: None, blocking=True)

    assert asyncio.run(readiness.report()) == ReadinessReport("ok", {"bus": "ok", "store": "ok"})
    up["bus"] = False
    report = asyncio.run(readiness.report())
    assert (report.ready, report.checks) == (False, {"bus": "lost the bus", "store": "ok"})
    up["bus"] = True
    assert asyncio.run(readiness.ready()) is True


def test_a_check_that_raises_is_not_ready_and_says_why() -> None:
    def store() -> str | None:
        raise StoreUnavailable("cannot list the lake: no such bucket")

    def buggy() -> str | None:
        raise ValueError("oops")

    readiness = Readiness()
    readiness.require("store", store, blocking=True)
    readiness.require("other", buggy)
    report = asyncio.run(readiness.report())
    assert report.status == "unavailable"
    assert report.checks == {
        "store": "cannot list the lake: no such bucket",
        "other": "ValueError: oops",
    }


def test_a_hung_blocking_check_is_not_ready_and_runs_once_at_a_time() -> None:
    release = threading.Event()
    calls: list[int] = []

    def database() -> str | None:
        calls.append(1)
        release.wait()
        return None

    readiness = Readiness(timeout_s=0.05)
    readiness.require("database", database, blocking=True)

    async def probes() -> tuple[ReadinessReport, ReadinessReport, ReadinessReport]:
        first = await readiness.report()
        second = await readiness.report()  # shares the check still in flight
        release.set()
        assert readiness._dependencies["database"].running is not None
        await readiness._dependencies["database"].running
        return first, second, await readiness.report()

    first, second, third = asyncio.run(probes())
    assert first.checks == second.checks == {"database": "no answer within 0.05s"}
    assert len(calls) == 2  # the hung one, then a fresh one once it had answered
    assert third.ready

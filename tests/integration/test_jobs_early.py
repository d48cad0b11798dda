"""Which job messages a worker may start before it claims them, on real messages of a real
bundled nats-server (see :mod:`aimesh.jobs.early`)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

import aimesh.jobs.early
from aimesh.bus import Bus, EmbeddedNats, connect, declare_topology
from aimesh.jobs.client import COPY_HEADER, REVISION_HEADER
from aimesh.jobs.early import EarlyStarts

JOB = "a" * 32
_subjects = itertools.count()


@pytest.fixture
def bus_url(tmp_path: Path) -> Iterator[str]:
    with EmbeddedNats(tmp_path / "nats", start_timeout=30) as server:
        yield server.url


async def _stored(bus: Bus, headers: dict[str, str]) -> str:
    """Store a job-like message on a subject of its own; the subject."""
    subject = f"aimesh.jobs.early-test-{next(_subjects)}"
    await bus.js.publish(subject, b"{}", headers=headers)
    return subject


async def _delivered(bus: Bus, subject: str, *, times: int = 1) -> Msg:
    """The message on ``subject`` as delivered the ``times``-th time."""
    sub = await bus.js.pull_subscribe(subject)
    for _ in range(times - 1):
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.nak()
    (msg,) = await sub.fetch(1, timeout=5)
    return msg


FRESH = {REVISION_HEADER: "1"}


def test_a_fresh_first_delivery_starts_early_and_nothing_else_does(
    bus_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with await connect(bus_url, timeout=10, name="test-early") as bus:
            await declare_topology(bus)
            before = await _stored(bus, FRESH)  # stored before the worker listened
            early = EarlyStarts(bus)
            await early.start()

            async def allowed(
                subject: str, headers: dict[str, str] = FRESH, job: str = JOB, times: int = 1
            ) -> bool:
                msg = await _delivered(bus, subject, times=times)
                return early.allow(msg.metadata, job, msg.headers or {})

            assert await allowed(await _stored(bus, FRESH))
            assert not await allowed(before, FRESH)
            assert not await allowed(await _stored(bus, FRESH), times=2)  # redelivered
            assert not await allowed(await _stored(bus, {REVISION_HEADER: "1", COPY_HEADER: "1"}))
            assert not await allowed(await _stored(bus, {"Other": "1"}))  # no revision
            early.heard_cancel(JOB)
            assert not await allowed(await _stored(bus, FRESH))
            assert await allowed(await _stored(bus, FRESH), job="b" * 32)
            monkeypatch.setattr(aimesh.jobs.early, "FRESH_S", 0.2)
            subject = await _stored(bus, FRESH)
            await asyncio.sleep(0.3)
            assert not await allowed(subject, job="b" * 32)  # stored too long ago

    asyncio.run(main())

"""Which job messages a worker may start before it claims them: the early-start rules.

A worker marks a job running (its claim, a write of the record) before it runs it, except
when it may start the job *early*: run the handler at once and write the claim only after
``claim_after_s`` (or at the first progress report), so that a short job's record is
written once, from queued to its outcome, against the revision it was queued at. Both
writes expect that revision: if the record moved on meanwhile (the job was cancelled),
the attempt is dropped and its message decided again from the record.

Starting early is safe only where the record is sure to be what the message says, so a
worker starts a message early only if all of these hold:

- it is the message's first delivery, and it carries the revision it was queued at and
  no mark of a copy (a repeated submission may publish a job's message again);
- it was stored less than ``FRESH_S`` ago: a copy of a message can exist only once the
  original has outlived the stream's duplicate window (two minutes), and a worker
  remembers the cancels it heard for twice that long;
- it was stored after the worker began to hear cancel requests (the job stream's last
  sequence then, read again after each reconnect), and its job is not one whose cancel
  the worker heard.

So a job cancelled in the queue is skipped, unless the cancel crosses the job's delivery
or its notice is lost (the cancelling client dies between its write and its notice):
then the job may start, and is stopped when the notice comes or at its claim, within
``claim_after_s``; nothing it did is recorded. A worker lost before it claims costs the
job no attempt: the next delivery is not a first one, and claims first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg

from aimesh.bus import JOBS_STREAM, Bus
from aimesh.jobs.client import COPY_HEADER, REVISION_HEADER

__all__ = ["FRESH_S", "EarlyStarts"]

log = logging.getLogger("aimesh.jobs.worker")

FRESH_S = 60.0
"""How recently a job message must have been stored to be started early."""
# Cancels heard are remembered this long (messages older than FRESH_S are claimed first),
# and at most this many (a flood of cancels forgets the oldest).
_REMEMBER_S = 2 * FRESH_S
_REMEMBER_AT_MOST = 65536
# After a failed read of the job stream's position, how long before the next try.
_RETRY_S = 5.0


class EarlyStarts:
    """One worker's early-start rules (see the module's doc)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._cancels: dict[str, float] = {}
        """Jobs whose cancel this worker heard, with when (monotonic), oldest first."""
        self._heard_since: int | None = None
        """The job stream's last sequence when the worker began to hear cancels (None: not
        known now): the jobs of later messages were cancelled, if at all, where it heard."""
        self._reconnects = 0
        self._learning: asyncio.Task[None] | None = None
        self._next_try = 0.0

    async def start(self) -> None:
        """Call once the worker listens for cancel requests."""
        await self._learn()

    def heard_cancel(self, job_id: str) -> None:
        """Note a cancel request: that job is claimed before it starts."""
        now = time.monotonic()
        self._cancels[job_id] = now
        while self._cancels:
            oldest = next(iter(self._cancels))
            if len(self._cancels) <= _REMEMBER_AT_MOST and self._cancels[oldest] > now - (
                _REMEMBER_S
            ):
                break
            del self._cancels[oldest]

    def allow(self, meta: Msg.Metadata, job_id: str, headers: Mapping[str, str]) -> bool:
        """Whether the message of ``job_id`` may start early."""
        if self._bus.nc.stats["reconnects"] != self._reconnects or self._heard_since is None:
            self._relearn()
            return False
        return (
            meta.num_delivered == 1
            and meta.sequence.stream > self._heard_since
            and REVISION_HEADER in headers
            and COPY_HEADER not in headers
            and job_id not in self._cancels
            and (datetime.now(UTC) - meta.timestamp).total_seconds() < FRESH_S
        )

    def _relearn(self) -> None:
        """Cancels may have been missed (a reconnect), or the position is unknown: learn it."""
        self._heard_since = None
        if self._learning is None and time.monotonic() >= self._next_try:
            self._learning = asyncio.create_task(self._learn())
            self._learning.add_done_callback(self._learned)

    def _learned(self, _task: asyncio.Task[None]) -> None:
        self._learning = None

    async def _learn(self) -> None:
        self._heard_since = None
        self._reconnects = self._bus.nc.stats["reconnects"]
        try:
            await self._bus.nc.flush()  # the subscription to cancels is in place
            info = await self._bus.js.stream_info(JOBS_STREAM)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("cannot read the job stream's position (%s); claiming every job", exc)
            self._next_try = time.monotonic() + _RETRY_S
            return
        if self._reconnects == self._bus.nc.stats["reconnects"]:
            self._heard_since = info.state.last_seq

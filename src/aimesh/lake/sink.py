"""A bus sink: rows published on a subject go into a dataset, at least once, no duplicates.

Each message is one JSON object (a row) or a JSON array of them. A durable JetStream pull
consumer takes messages with explicit acks; rows gather into a micro-batch of up to
``batch_rows`` rows or ``batch_seconds`` seconds, which is written as one Delta commit and
only then acknowledged. A crash before the commit loses nothing (the messages come back).
A crash between the commit and the acks cannot duplicate rows: the commit records, as a
Delta transaction identifier (``txn``), the last stream sequence it holds, and a sink that
starts again skips every message at or below it. Publishers that give each message an id
(``Nats-Msg-Id``) are also protected from their own retries by the stream's duplicate
window. A message that is not rows, or whose rows do not fit the dataset, goes to
``aimesh.dlq.lake.<dataset>`` with the reason and is acknowledged: it never blocks the sink.

The sink reads from whichever stream captures its subject; when none does, it creates one
(``AIMESH_LAKE_<hash of the subject>``, messages kept ``max_age_s``, at most ``max_bytes``:
when full, the oldest messages go, read or not, so publishers are never refused; one made
by an older release without a size limit gets it). With ``evolve``, new
fields become new columns; without it, a row with an unknown field is a dead letter.

One sink per dataset and subject at a time: two would share the consumer and interleave
their commits' sequence marks, and one restarting would skip rows the other had marked
past. So a sink holds a lease on the bus while it runs (:class:`~aimesh.bus.Lease`): a
second one is refused (``lease_held``), and one that loses its lease stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pyarrow as pa
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy

from aimesh.bus import Bus, Lease, StreamSpec, declare_topology
from aimesh.errors import (
    AimeshError,
    BusUnavailable,
    Conflict,
    InvalidData,
    InvalidRequest,
    SchemaMismatch,
)
from aimesh.lake.delta import first_line
from aimesh.lake.lake import Lake
from aimesh.lake.refs import check_dataset_name
from aimesh.lake.schema import delta_schema

__all__ = ["LakeSink", "SinkCommit", "SinkNames", "sink_names"]

log = logging.getLogger("aimesh.lake.sink")

_FETCH_MAX = 256
_POLL_S = 0.5
_RETRY_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class SinkNames:
    """The bus names one sink (dataset + subject) uses."""

    durable: str
    """Its durable consumer."""
    stream: str
    """The stream it creates for its subject when no stream captures the subject."""
    app_id: str
    """Its Delta transaction id: the commits record the last stream sequence under it."""
    dead_letters: str
    """Where messages it cannot write go."""


def sink_names(dataset: str, subject: str) -> SinkNames:
    """The names of the sink that feeds ``dataset`` from ``subject``."""
    check_dataset_name(dataset)
    if not subject or any(c in subject for c in " \t\r\n") or ".." in subject:
        raise InvalidRequest(f"invalid subject {subject!r}")
    digest = hashlib.sha256(subject.encode()).hexdigest()[:10]
    return SinkNames(
        durable=f"lake_{dataset}_{digest}",
        stream=f"AIMESH_LAKE_{digest.upper()}",
        app_id=f"aimesh-sink:{subject}",
        dead_letters=f"aimesh.dlq.lake.{dataset}",
    )


@dataclass(frozen=True, slots=True)
class SinkCommit:
    """One micro-batch the sink committed."""

    version: int
    rows: int
    messages: int
    dead_letters: int
    last_seq: int


@dataclass
class _Taken:
    msg: Msg
    seq: int
    rows: list[dict[str, Any]]


@dataclass
class _Batch:
    taken: list[_Taken] = field(default_factory=list)
    redelivered: list[Msg] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    dead: set[int] = field(default_factory=set)
    """Sequences already dead-lettered (and acknowledged)."""
    rows: int = 0
    started: float | None = None

    def add(self, item: _Taken, now: float) -> None:
        self.taken.append(item)
        self.seqs.add(item.seq)
        self.rows += len(item.rows)
        if self.started is None:
            self.started = now


class LakeSink:
    """Consumes ``subject`` into dataset ``dataset`` until :meth:`run`'s ``stop`` is set."""

    def __init__(
        self,
        lake: Lake,
        bus: Bus,
        dataset: str,
        subject: str,
        *,
        batch_rows: int,
        batch_seconds: float,
        ack_wait_s: float,
        max_age_s: float,
        max_bytes: int = 1024**3,
        evolve: bool = False,
        on_commit: Callable[[SinkCommit], None] | None = None,
        on_start: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = sink_names(dataset, subject)
        self.lake = lake
        self.bus = bus
        self.dataset = dataset
        self.subject = subject
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.ack_wait_s = ack_wait_s
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.evolve = evolve
        self.on_commit = on_commit
        self.on_start = on_start
        """Called once the sink holds its lease and consumes."""
        self.clock = clock
        self.committed = 0
        """The highest stream sequence whose rows are in the dataset."""
        self.stream = ""
        self._batch = _Batch()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then commit and acknowledge the batch in hand.

        Raises :class:`~aimesh.errors.LeaseHeld` when another sink of the dataset and subject
        runs; stops (with :class:`~aimesh.errors.Conflict`) if it loses its lease.
        """
        await declare_topology(self.bus)
        what = f"the sink of {self.subject} into dataset {self.dataset}"
        async with Lease(self.bus, self.names.durable, what=what) as lease:
            await self._run(stop, lease)
            if lease.lost.is_set():
                raise Conflict(f"{what} stopped: another process took its lease")

    async def _run(self, stop: asyncio.Event, lease: Lease) -> None:
        self.stream = await self._ensure_stream()
        found = await asyncio.to_thread(
            self.lake.transaction_version, self.dataset, self.names.app_id
        )
        self.committed = found or 0
        sub = await self._consumer()
        if self.on_start is not None:
            self.on_start()
        log.info(
            "sink %s -> %s: stream %s, consumer %s, committed up to sequence %d",
            self.subject, self.dataset, self.stream, self.names.durable, self.committed,
        )  # fmt: skip
        try:
            while not stop.is_set() and not lease.lost.is_set():
                for msg in await self._fetch(sub):
                    await self._take(msg)
                if self._due():
                    await self._flush(stop)
            if not lease.lost.is_set():  # else another sink has the batch's messages
                await self._flush(stop)
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()

    # -- setup -----------------------------------------------------------------------------

    async def _ensure_stream(self) -> str:
        """The stream that captures the subject, created (kept ``max_age_s``) if none does."""
        js = self.bus.js
        spec = StreamSpec(
            name=self.names.stream,
            subjects=(self.subject,),
            description=f"Messages on {self.subject} kept for lake sinks; when full, the "
            "oldest go first.",
            max_age_s=self.max_age_s,
            max_bytes=self.max_bytes,
            discard="old",
        )
        try:
            found = str(await js.find_stream_name_by_subject(self.subject))
            if found == spec.name:
                await self._bound(spec)
            return found
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(
                f"cannot look up streams on the bus at {self.bus.url}: {exc}"
            ) from exc
        try:
            await js.add_stream(spec.to_config())
        except nats.js.errors.BadRequestError as exc:
            raise BusUnavailable(
                f"cannot create stream {spec.name} for {self.subject}: {exc.description}; "
                "create a stream that captures the subject, and the sink will use it"
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"cannot create stream {spec.name}: {exc}") from exc
        log.info("created stream %s for %s", spec.name, self.subject)
        return spec.name

    async def _bound(self, spec: StreamSpec) -> None:
        """Give a stream of ours made by an older release (no size limit) its limit."""
        info = await self.bus.js.stream_info(spec.name)
        if info.config.max_bytes not in (None, -1):
            return  # bounded already, perhaps by an operator: theirs to tune
        info.config.max_bytes = spec.max_bytes
        info.config.discard = DiscardPolicy.OLD
        await self.bus.js.update_stream(info.config)
        log.info("limited stream %s to %d bytes", spec.name, spec.max_bytes)

    async def _consumer(self) -> Any:
        js, durable = self.bus.js, self.names.durable
        config = ConsumerConfig(
            durable_name=durable,
            description=f"aimesh lake sink {self.subject} -> {self.dataset}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self.batch_rows + 1_000,
            filter_subject=self.subject,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            try:
                info = await js.consumer_info(self.stream, durable)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None and info.num_ack_pending:
                # A sink died holding messages: rather than wait ack_wait for them to come
                # back, start over right after what is committed (and acknowledged).
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = max(self.committed, floor) + 1
                await js.delete_consumer(self.stream, durable)
                info = None
            if info is None:
                await js.add_consumer(self.stream, config)
            return await js.pull_subscribe_bind(durable=durable, stream=self.stream)
        except nats.js.errors.APIError as exc:
            raise BusUnavailable(
                f"cannot set up consumer {durable} on stream {self.stream}: {exc.description}"
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"cannot set up consumer {durable}: {exc}") from exc

    # -- the loop --------------------------------------------------------------------------

    async def _fetch(self, sub: Any) -> list[Msg]:
        room = max(1, min(_FETCH_MAX, self.batch_rows - self._batch.rows))
        wait = _POLL_S
        if self._batch.started is not None:
            left = self._batch.started + self.batch_seconds - self.clock()
            wait = min(wait, max(left, 0.01))
        try:
            msgs: list[Msg] = await sub.fetch(batch=room, timeout=wait)
            return msgs
        except TimeoutError:
            return []
        except nats.errors.Error as exc:
            log.warning("sink fetch failed (%s); retrying", exc)
            await asyncio.sleep(_POLL_S)
            return []

    def _due(self) -> bool:
        batch = self._batch
        if batch.started is None:
            return False
        return batch.rows >= self.batch_rows or (self.clock() - batch.started >= self.batch_seconds)

    async def _take(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self.committed:  # written before a crash stopped its ack
            await msg.ack()
            return
        if seq in self._batch.seqs:  # redelivered while its batch waits for storage
            self._batch.redelivered.append(msg)
            return
        rows, reason = _rows(msg.data)
        if reason is not None:
            await self._dead_letter(msg, seq, reason)
            return
        self._batch.add(_Taken(msg, seq, rows), self.clock())

    async def _flush(self, stop: asyncio.Event) -> None:
        """Write the batch as one commit, then acknowledge it; retry while storage fails."""
        batch = self._batch
        if not batch.taken:
            self._batch = _Batch()
            return
        delay = 0.5
        while True:
            try:
                commit = await self._commit(batch)
                break
            except (SchemaMismatch, InvalidData) as exc:
                for item in batch.taken:
                    if item.seq not in batch.dead:
                        await self._dead_letter(item.msg, item.seq, exc.message)
                self._batch = _Batch()
                return
            except AimeshError as exc:
                if stop.is_set():
                    log.warning("stopping with an unwritten batch (%s); it will be redelivered",
                                exc.message)  # fmt: skip
                    self._batch = _Batch()
                    return
                log.warning("cannot write to %s (%s); retrying in %.1fs", self.dataset,
                            exc.message, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        for item in batch.taken:
            if item.seq not in batch.dead:
                await item.msg.ack()
        for msg in batch.redelivered:
            await msg.ack()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.bus.nc.flush()
        self.committed = max(self.committed, commit.last_seq)
        self._batch = _Batch()
        if self.on_commit is not None:
            self.on_commit(commit)

    async def _commit(self, batch: _Batch) -> SinkCommit:
        schema = await asyncio.to_thread(self._schema)
        good, bad = self._arrow([t for t in batch.taken if t.seq not in batch.dead], schema)
        # Before the commit: a crash after it would skip these when they come back.
        for item, reason in bad:
            if not await self._dead_letter(item.msg, item.seq, reason):
                raise BusUnavailable(f"cannot dead-letter message {item.seq}")
            batch.dead.add(item.seq)
        last = max(item.seq for item in batch.taken)
        version = -1
        rows = 0
        if good is not None and good.num_rows:
            result = await asyncio.to_thread(
                self.lake.write,
                self.dataset,
                good,
                evolve=self.evolve,
                metadata={
                    "sink.subject": self.subject,
                    "sink.stream": self.stream,
                    "sink.last_seq": str(last),
                },
                app_transaction=(self.names.app_id, last),
            )
            version, rows = result.version, result.rows
        return SinkCommit(
            version=version,
            rows=rows,
            messages=len(batch.taken) - len(batch.dead),
            dead_letters=len(batch.dead),
            last_seq=last,
        )

    def _schema(self) -> pa.Schema | None:
        try:
            return self.lake.schema(self.dataset)
        except AimeshError as exc:
            if exc.code == "dataset_not_found":
                return None
            raise

    def _arrow(
        self, taken: list[_Taken], schema: pa.Schema | None
    ) -> tuple[pa.Table | None, list[tuple[_Taken, str]]]:
        """The rows of ``taken`` as one table, and the messages whose rows do not fit."""
        rows = [row for item in taken for row in item.rows]
        if not rows:
            return None, []
        if schema is None:
            schema = _infer(rows) or _infer(taken[0].rows)
            if schema is None:
                return None, [(item, "cannot infer column types from the rows") for item in taken]
        known = set(schema.names)
        bad: list[tuple[_Taken, str]] = []
        fitting = []
        for item in taken:
            unknown = sorted({k for row in item.rows for k in row} - known)
            if unknown and not self.evolve:
                bad.append((item, f"unknown column(s) {', '.join(unknown)} (the sink runs "
                                  "without --evolve)"))  # fmt: skip
            else:
                fitting.append(item)
        if self.evolve:
            new = sorted({k for item in fitting for row in item.rows for k in row} - known)
            if new:
                extra = _infer([{k: row.get(k) for k in new} for i in fitting for row in i.rows])
                if extra is not None:
                    schema = pa.schema([*schema, *extra])
                known = set(schema.names)
        try:
            return _table([r for item in fitting for r in item.rows], schema), bad
        except _Unfit:
            pass
        tables = []
        for item in fitting:
            try:
                tables.append(_table(item.rows, schema))
            except _Unfit as exc:
                bad.append((item, str(exc)))
        return (pa.concat_tables(tables) if tables else None), bad

    async def _dead_letter(self, msg: Msg, seq: int, reason: str) -> bool:
        """Publish ``msg`` with ``reason`` to the dead-letter subject, then acknowledge it."""
        reason = " ".join(reason.split())[:1000]
        headers = {
            "Aimesh-Reason": reason,
            "Aimesh-Dataset": self.dataset,
            "Aimesh-Subject": msg.subject,
            "Aimesh-Stream": self.stream,
            "Aimesh-Stream-Seq": str(seq),
            "Nats-Msg-Id": f"lake:{self.dataset}:{self.stream}:{seq}",
        }
        try:
            await self.bus.js.publish(self.names.dead_letters, msg.data, headers=headers)
        except (nats.errors.Error, TimeoutError) as exc:
            # Not acknowledged: it comes back after ack_wait and is tried again.
            log.warning("cannot dead-letter message %d (%s)", seq, exc)
            return False
        log.warning("message %d dead-lettered: %s", seq, reason)
        await msg.ack()
        return True


class _Unfit(Exception):
    """Rows that do not convert to the schema."""


def _rows(data: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """A message's rows, or why it has none."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return [], f"not JSON: {exc}"
    if isinstance(value, dict):
        return [value], None
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return value, None
        return [], "a JSON array whose elements are not all objects (rows)"
    return [], f"a JSON {type(value).__name__}, not an object (a row) or an array of them"


def _infer(rows: list[dict[str, Any]]) -> pa.Schema | None:
    try:
        return delta_schema(pa.Table.from_pylist(rows).schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError, AimeshError):
        return None


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise _Unfit(f"rows do not fit the dataset's columns: {first_line(exc)}") from exc

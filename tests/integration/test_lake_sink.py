"""The bus sink on a real NATS: at least once, no duplicates across a crash, dead letters."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.js.errors
import pyarrow as pa
import pytest
from nats.js.api import DiscardPolicy

from aimesh.bus import LEASE_TTL_S, LEASES_BUCKET, Bus, connect
from aimesh.config import Settings
from aimesh.errors import Conflict, LeaseHeld
from aimesh.lake import Lake, LakeSink, sink_names


def _unique() -> str:
    return uuid.uuid4().hex[:10]


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def _drained(bus: Bus, dataset: str, subject: str) -> bool:
    """Whether the sink's consumer exists and has nothing left to deliver or acknowledge."""
    names = sink_names(dataset, subject)
    try:
        stream = await bus.js.find_stream_name_by_subject(subject)
        info = await bus.js.consumer_info(stream, names.durable)
    except nats.js.errors.NotFoundError:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _publish(bus: Bus, subject: str, ids: range, *, pause_every: int = 0) -> None:
    for i in ids:
        row = {"id": i, "amount": i * 0.5, "label": "fraud" if i % 7 == 0 else "ok"}
        await bus.js.publish(subject, json.dumps(row).encode(), headers={"Nats-Msg-Id": f"tx-{i}"})
        if pause_every and i % pause_every == 0:
            await asyncio.sleep(0.01)


def _ids(lake: Lake, dataset: str) -> list[int]:
    ids: list[int] = lake.read(dataset, columns=["id"]).column("id").to_pylist()
    return ids


def test_the_sink_survives_sigkill_with_no_lost_and_no_duplicated_rows(
    nats_url: str, tmp_path: Path
) -> None:
    dataset, subject = f"tx_{_unique()}", f"lake_test.{_unique()}.raw"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env.update(AIMESH_HOME=str(tmp_path / "home"), AIMESH_BUS__URL=nats_url)
    lake = Lake.from_settings(Settings(home=tmp_path / "home"))
    command = [
        sys.executable, "-m", "aimesh", "lake", "ingest", dataset, "--from-subject", subject,
        "--batch-rows", "40", "--batch-seconds", "0.1",
    ]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def scenario() -> None:
        async with await connect(nats_url, timeout=5, name="test-publisher") as bus:
            sink = start()
            try:
                await _until(lambda: _stream_exists(bus, subject))
                publishing = asyncio.create_task(_publish(bus, subject, range(1000), pause_every=5))
                await _until(lambda: _rows_at_least(lake, dataset, 200))
                sink.send_signal(signal.SIGKILL)  # mid-stream: commits done, acks maybe not
                sink.communicate(timeout=10)
                await publishing
                # A publisher retrying after the crash: same ids, dropped by the stream.
                await _publish(bus, subject, range(100, 200))
                sink = start()
                await _until(lambda: _drained(bus, dataset, subject))
            finally:
                sink.send_signal(signal.SIGTERM)
                out, err = sink.communicate(timeout=20)
            assert sink.returncode == 0, err.decode()
            # What the restarted sink did, in all: the rows the first had not committed.
            said = re.search(r"sink stopped: \+([\d,]+) rows in (\d+) version", out.decode())
            assert said is not None, out.decode()
            assert 0 < int(said[1].replace(",", "")) <= 800 and int(said[2]) >= 1

    asyncio.run(scenario())

    ids = _ids(lake, dataset)
    assert len(ids) == 1000
    assert sorted(ids) == list(range(1000))
    versions = lake.history(dataset)
    assert all(v.metadata.get("aimesh.sink.subject") == subject for v in versions)


async def _stream_exists(bus: Bus, subject: str) -> bool:
    try:
        await bus.js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _rows_at_least(lake: Lake, dataset: str, n: int) -> bool:
    try:
        return lake.describe(dataset).rows >= n
    except Exception:  # not created yet
        return False


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Lake]:
    yield Lake.from_settings(Settings(home=tmp_path / "home"))


def _sink(lake: Lake, bus: Bus, dataset: str, subject: str, **overrides: object) -> LakeSink:
    options: dict[str, object] = {
        "batch_rows": 25,
        "batch_seconds": 0.1,
        "ack_wait_s": 30.0,
        "max_age_s": 3600.0,
        **overrides,
    }
    return LakeSink(lake, bus, dataset, subject, **options)  # type: ignore[arg-type]


async def _run_until_drained(sink: LakeSink, bus: Bus) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await _until(lambda: _drained(bus, sink.dataset, sink.subject))
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def test_a_restart_skips_what_a_crashed_sink_committed_but_never_acknowledged(
    nats_url: str, lake: Lake
) -> None:
    dataset, subject = f"tx_{_unique()}", f"lake_test.{_unique()}.raw"
    names = sink_names(dataset, subject)

    async def scenario() -> None:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            first = _sink(lake, bus, dataset, subject)
            await _run_until_drained(first, bus)  # creates the stream and the consumer
            await _publish(bus, subject, range(100))
            # What a sink that died between its commit and its acks leaves: the rows of the
            # first 40 messages (stream sequences 1..40) and the commit's mark, no acks.
            rows = [{"id": i, "amount": i * 0.5, "label": "x"} for i in range(40)]
            lake.write(dataset, pa.Table.from_pylist(rows), app_transaction=(names.app_id, 40))
            await _run_until_drained(_sink(lake, bus, dataset, subject), bus)

    asyncio.run(scenario())

    assert sorted(_ids(lake, dataset)) == list(range(100))
    assert lake.transaction_version(dataset, names.app_id) == 100


def test_bad_messages_go_to_the_dead_letter_subject_and_never_block_the_sink(
    nats_url: str, lake: Lake
) -> None:
    dataset, subject = f"tx_{_unique()}", f"lake_test.{_unique()}.raw"
    names = sink_names(dataset, subject)
    committed: list[int] = []

    async def scenario() -> list[tuple[bytes, str]]:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            sink = _sink(lake, bus, dataset, subject, on_commit=lambda c: committed.append(c.rows))
            stop = asyncio.Event()
            task = asyncio.create_task(sink.run(stop))
            await _until(lambda: _stream_exists(bus, subject))
            await _until(lambda: _drained(bus, dataset, subject))
            publish = bus.js.publish
            await publish(subject, b'{"id": 1, "amount": 0.5}')
            await publish(subject, b"not json at all")
            await publish(subject, b'[{"id": 2, "amount": 1.0}, {"id": 3, "amount": 1.5}]')
            await publish(subject, b"42")
            await publish(subject, b'{"id": "four", "amount": 2.0}')  # id is int64 by now
            await publish(subject, b'{"id": 5, "amount": 2.5, "surprise": true}')
            await publish(subject, b'{"id": 6}')
            await _until(lambda: _drained(bus, dataset, subject))
            stop.set()
            await asyncio.wait_for(task, 20)
            dead = await bus.js.pull_subscribe(names.dead_letters, stream="AIMESH_JOBS_DLQ")
            found = await dead.fetch(10, timeout=2)
            return [(m.data, (m.headers or {}).get("Aimesh-Reason", "")) for m in found]

    dead = asyncio.run(scenario())

    assert sorted(_ids(lake, dataset)) == [1, 2, 3, 6]
    reasons = {data: reason for data, reason in dead}
    assert set(reasons) == {
        b"not json at all",
        b"42",
        b'{"id": "four", "amount": 2.0}',
        b'{"id": 5, "amount": 2.5, "surprise": true}',
    }
    assert reasons[b"not json at all"].startswith("not JSON")
    assert "not an object" in reasons[b"42"]
    assert "do not fit" in reasons[b'{"id": "four", "amount": 2.0}']
    assert "unknown column(s) surprise" in reasons[b'{"id": 5, "amount": 2.5, "surprise": true}']
    assert sum(committed) == 4


def test_evolve_lets_new_fields_in_as_columns(nats_url: str, lake: Lake) -> None:
    dataset, subject = f"tx_{_unique()}", f"lake_test.{_unique()}.raw"

    async def scenario() -> None:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            await _run_until_drained(_sink(lake, bus, dataset, subject, evolve=True), bus)
            await bus.js.publish(subject, b'{"id": 1}')
            await _run_until_drained(_sink(lake, bus, dataset, subject, evolve=True), bus)
            await bus.js.publish(subject, b'{"id": 2, "country": "FR"}')
            await _run_until_drained(_sink(lake, bus, dataset, subject, evolve=True), bus)

    asyncio.run(scenario())

    rows = lake.query(f"select * from {dataset} order by id").table.to_pylist()
    assert rows == [{"id": 1, "country": None}, {"id": 2, "country": "FR"}]


def test_one_sink_per_dataset_and_subject_runs_at_a_time(nats_url: str, lake: Lake) -> None:
    dataset, subject = f"tx_{_unique()}", f"lake_test.{_unique()}.raw"

    async def scenario() -> None:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            stop = asyncio.Event()
            first = asyncio.create_task(_sink(lake, bus, dataset, subject).run(stop))
            await _until(lambda: _drained(bus, dataset, subject))  # it consumes
            with pytest.raises(LeaseHeld) as held:
                await _sink(lake, bus, dataset, subject).run(asyncio.Event())
            assert held.value.code == "lease_held"
            assert f"process {os.getpid()} on" in held.value.message
            assert not first.done()  # the refused one took nothing from the first
            stop.set()
            await asyncio.wait_for(first, 20)
            # Once the first has stopped, its lease is free: another sink takes over.
            await _publish(bus, subject, range(3))
            await _run_until_drained(_sink(lake, bus, dataset, subject), bus)

    asyncio.run(scenario())
    assert sorted(_ids(lake, dataset)) == [0, 1, 2]


def test_a_sink_that_loses_its_lease_stops(nats_url: str, lake: Lake) -> None:
    dataset, subject = f"tx_{_unique()}", f"lake_test.{_unique()}.raw"

    async def scenario() -> None:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            running = asyncio.create_task(_sink(lake, bus, dataset, subject).run(asyncio.Event()))
            await _until(lambda: _drained(bus, dataset, subject))
            # Another process has the key now (as after the first was cut off from the bus
            # longer than a lease lasts): the first finds out when it next renews.
            leases = await bus.js.key_value(LEASES_BUCKET)
            await leases.put(sink_names(dataset, subject).durable, b"{}")
            with pytest.raises(Conflict, match="another process took its lease"):
                await asyncio.wait_for(running, LEASE_TTL_S)

    asyncio.run(scenario())


def test_the_sinks_stream_is_bounded_and_an_older_unbounded_one_gets_the_limit(
    nats_url: str, lake: Lake
) -> None:
    made, older = f"lake_test.{_unique()}.raw", f"lake_test.{_unique()}.raw"

    async def scenario() -> None:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            sink = _sink(lake, bus, f"tx_{_unique()}", made, max_bytes=8 * 1024**2)
            await _run_until_drained(sink, bus)
            config = (await bus.js.stream_info(sink_names(sink.dataset, made).stream)).config
            assert config.max_bytes == 8 * 1024**2
            assert config.discard == DiscardPolicy.OLD

            # As an older release made it: the sink's own stream, with no size limit.
            dataset = f"tx_{_unique()}"
            name = sink_names(dataset, older).stream
            await bus.js.add_stream(name=name, subjects=[older], max_age=3600)
            await _publish(bus, older, range(3))
            await _run_until_drained(_sink(lake, bus, dataset, older, max_bytes=4 * 1024**2), bus)
            info = await bus.js.stream_info(name)
            assert info.config.max_bytes == 4 * 1024**2
            assert info.state.messages == 3  # nothing dropped on the way

    asyncio.run(scenario())

"""The bus against the real bundled nats-server: embedded server, home sharing, topology,
typed events, and the ``aimesh bus`` commands."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import pytest
from nats.js.api import RetentionPolicy, StorageType

from aimesh.bus import (
    BUCKETS,
    DISCOVERY_BUCKET,
    DLQ_STREAM,
    EVENTS_STREAM,
    JOB_DATA_BUCKET,
    JOB_DATA_TTL_S,
    JOBS_BUCKET,
    JOBS_STREAM,
    LEASE_TTL_S,
    LEASES_BUCKET,
    EmbeddedNats,
    Event,
    RegistryEvent,
    bus_credentials,
    connect,
    declare_topology,
    embedded_bus_status,
    ensure_bus,
    open_bus,
    publish_event,
    stop_embedded_bus,
    subscribe_events,
)
from aimesh.config import BusSettings, Settings
from aimesh.errors import BusUnavailable, Conflict

T = TypeVar("T")
WAIT_S = 10.0  # deadline for something that normally takes milliseconds


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its parent counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def accepts_connections(url: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=1):
            return True
    except OSError:
        return False


def event(model: str = "iris", **fields: Any) -> RegistryEvent:
    return RegistryEvent(kind="model", action="created", model=model, actor="tester", **fields)


def unique_model() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Settings]:
    """Settings for a fresh home, with no bus URL configured, whose bus is always stopped."""
    settings = Settings(home=tmp_path / "home", bus=BusSettings())
    try:
        yield settings
    finally:
        stop_embedded_bus(settings)


def run_ensure_bus_in_another_process(settings: Settings) -> subprocess.Popen[str]:
    code = (
        "from aimesh.bus import ensure_bus\n"
        "from aimesh.config import load_settings\n"
        "print(ensure_bus(load_settings()))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=cli_env(settings.home_dir),
        cwd=settings.home_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env["AIMESH_HOME"] = str(home)
    return env


# The embedded server --------------------------------------------------------------------


def test_embedded_server_binds_a_free_port_and_stops_leaving_no_process(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path) as server:
        pid, url = server.pid, server.url
        assert pid is not None
        assert port_of(url) != 4222
        assert url.startswith("nats://127.0.0.1:")
        assert accepts_connections(url)
        assert (tmp_path / "jetstream").is_dir()
    assert process_gone(pid)
    assert not accepts_connections(url)
    assert "Server is ready" in (tmp_path / "nats-server.log").read_text()


def test_embedded_server_uses_the_port_it_is_given(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedNats(tmp_path, port=port) as server:
        assert server.url == f"nats://127.0.0.1:{port}"


def test_embedded_server_refuses_port_4222(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4222"):
        EmbeddedNats(tmp_path, port=4222)


def test_embedded_server_that_cannot_bind_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedNats(tmp_path, port=taken.getsockname()[1], start_timeout=WAIT_S)
        with pytest.raises(BusUnavailable, match="exited"):
            server.start()
    assert not server.running


# One bus per home -----------------------------------------------------------------------


def test_ensure_bus_starts_once_and_every_process_reuses_it(home: Settings) -> None:
    url = ensure_bus(home)
    assert port_of(url) != 4222
    assert ensure_bus(home) == url

    other = run_ensure_bus_in_another_process(home)
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.strip() == url


def test_processes_starting_at_once_agree_on_one_server(home: Settings) -> None:
    starters = [run_ensure_bus_in_another_process(home) for _ in range(4)]
    urls = set()
    for proc in starters:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        urls.add(out.strip())
    assert len(urls) == 1
    assert ensure_bus(home) in urls


def test_configured_bus_url_is_used_as_is(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, bus=BusSettings(url="nats://bus.example:4999"))
    assert ensure_bus(settings) == "nats://bus.example:4999"
    assert not (tmp_path / "bus" / "server.json").exists()


def test_stale_record_of_a_dead_server_is_replaced(home: Settings) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old_url = f"nats://127.0.0.1:{free_port()}"
    record = home.bus_dir / "server.json"
    record.parent.mkdir(parents=True)
    record.write_text(
        json.dumps(
            {
                "url": old_url,
                "monitor_url": "http://127.0.0.1:1",
                "pid": dead.pid,
                "server_id": "GONE",
                "started": "2024-01-01T00:00:00Z",
            }
        )
    )
    assert not embedded_bus_status(home).running

    url = ensure_bus(home)
    replaced = json.loads(record.read_text())
    assert replaced["url"] == url
    assert replaced["pid"] != dead.pid and replaced["server_id"] != "GONE"
    assert url == old_url  # its port was free, so old clients find the new server
    assert embedded_bus_status(home).running


def test_record_whose_pid_is_now_another_program_is_never_signalled(home: Settings) -> None:
    record = home.bus_dir / "server.json"
    record.parent.mkdir(parents=True)
    record.write_text(
        json.dumps(
            {
                "url": f"nats://127.0.0.1:{free_port()}",
                "monitor_url": "http://127.0.0.1:1",
                "pid": os.getpid(),  # alive, and certainly not a nats-server
                "server_id": "NOT-US",
                "started": "2024-01-01T00:00:00Z",
            }
        )
    )
    assert not embedded_bus_status(home).running
    assert stop_embedded_bus(home) is False  # and this test process is still here


def test_stop_embedded_bus_stops_the_server(home: Settings) -> None:
    url = ensure_bus(home)
    status = embedded_bus_status(home)
    assert status.running and status.url == url and status.pid is not None

    assert stop_embedded_bus(home) is True
    assert process_gone(status.pid)
    assert not accepts_connections(url)
    assert not embedded_bus_status(home).running
    assert stop_embedded_bus(home) is False


def test_a_restarted_bus_takes_its_old_port_so_clients_reconnect(home: Settings) -> None:
    url = ensure_bus(home)

    async def scenario() -> RegistryEvent:
        credentials = bus_credentials(home)
        async with await connect(url, timeout=WAIT_S, name="test", credentials=credentials) as bus:
            await declare_topology(bus)
            async with await subscribe_events(bus) as stream:
                await asyncio.to_thread(stop_embedded_bus, home)
                assert await asyncio.to_thread(ensure_bus, home) == url
                sent = event(unique_model())
                deadline = time.monotonic() + WAIT_S
                while True:  # publishes fail until the client has reconnected
                    try:
                        await publish_event(bus, sent, timeout=0.5)
                        break
                    except BusUnavailable:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
                received = await asyncio.wait_for(anext(stream), WAIT_S)
                assert received == sent
                return received

    run(scenario())


def test_a_server_started_by_another_process_is_stopped_by_pid(home: Settings) -> None:
    other = run_ensure_bus_in_another_process(home)
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    pid = embedded_bus_status(home).pid
    assert pid is not None

    assert stop_embedded_bus(home) is True
    assert process_gone(pid)
    assert not accepts_connections(out.strip())


# Connecting -------------------------------------------------------------------------------


def test_connect_to_a_closed_port_raises_bus_unavailable_quickly() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BusUnavailable, match=re.escape(url)) as caught:
        run(connect(url, timeout=1.0, name="test"))
    assert time.monotonic() - started < 3.0
    assert caught.value.code == "bus_unavailable"
    assert "connection refused" in caught.value.message


def test_connect_masks_a_password_in_its_error() -> None:
    url = f"nats://user:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(BusUnavailable) as caught:
        run(connect(url, timeout=0.5, name="test"))
    assert "s3cret" not in caught.value.message


# Topology ---------------------------------------------------------------------------------


def test_declare_topology_is_idempotent(nats_url: str) -> None:
    async def scenario() -> None:
        async with (
            await connect(nats_url, timeout=WAIT_S, name="a") as a,
            await connect(nats_url, timeout=WAIT_S, name="b") as b,
        ):
            await declare_topology(a)
            await declare_topology(a)
            await asyncio.gather(declare_topology(a), declare_topology(b))

            events = (await a.js.stream_info(EVENTS_STREAM)).config
            assert events.subjects == ["aimesh.events.>"]
            assert events.retention == RetentionPolicy.LIMITS
            assert events.max_age == 7 * 24 * 3600
            assert events.duplicate_window == 120

            jobs = (await a.js.stream_info(JOBS_STREAM)).config
            assert jobs.subjects == ["aimesh.jobs.>"]
            assert jobs.retention == RetentionPolicy.WORK_QUEUE

            dlq = (await a.js.stream_info(DLQ_STREAM)).config
            assert dlq.subjects == ["aimesh.dlq.>"]

            discovery = await (await a.js.key_value(DISCOVERY_BUCKET)).status()
            assert discovery.ttl == 6
            assert discovery.stream_info.config.storage == StorageType.MEMORY
            jobs_kv = await (await a.js.key_value(JOBS_BUCKET)).status()
            assert jobs_kv.stream_info.config.storage == StorageType.FILE
            data_kv = await (await a.js.key_value(JOB_DATA_BUCKET)).status()
            assert data_kv.ttl == JOB_DATA_TTL_S
            leases = await (await a.js.key_value(LEASES_BUCKET)).status()
            assert leases.ttl == LEASE_TTL_S
            assert leases.stream_info.config.storage == StorageType.MEMORY
            names = {DISCOVERY_BUCKET, JOBS_BUCKET, JOB_DATA_BUCKET, LEASES_BUCKET}
            assert names == {b.name for b in BUCKETS}

    run(scenario())


def test_declare_topology_refuses_to_change_a_stream_declared_differently(
    tmp_path: Path,
) -> None:
    async def scenario(url: str) -> None:
        async with await connect(url, timeout=WAIT_S, name="test") as bus:
            await bus.js.add_stream(
                name=EVENTS_STREAM, subjects=["aimesh.events.>"], storage=StorageType.MEMORY
            )
            with pytest.raises(Conflict, match=EVENTS_STREAM):
                await declare_topology(bus)
            info = await bus.js.stream_info(EVENTS_STREAM)
            assert info.config.storage == StorageType.MEMORY  # left as it was, data kept

    with EmbeddedNats(tmp_path) as server:
        run(scenario(server.url))


def test_declare_topology_updates_limits_in_place(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        async with await connect(url, timeout=WAIT_S, name="test") as bus:
            await bus.js.add_stream(name=EVENTS_STREAM, subjects=["aimesh.events.>"], max_age=60)
            await bus.js.create_key_value(
                bucket=DISCOVERY_BUCKET, ttl=60, storage=StorageType.MEMORY
            )
            await declare_topology(bus)
            events = await bus.js.stream_info(EVENTS_STREAM)
            assert events.config.max_age == 7 * 24 * 3600
            discovery = await bus.js.stream_info(f"KV_{DISCOVERY_BUCKET}")
            assert discovery.config.max_age == 6

    with EmbeddedNats(tmp_path) as server:
        run(scenario(server.url))


# Events -----------------------------------------------------------------------------------


def test_published_registry_event_arrives_decoded(nats_url: str) -> None:
    sent = RegistryEvent(
        kind="alias",
        action="moved",
        model=unique_model(),
        version=3,
        alias="champion",
        actor="alice",
        data={"from": 2, "reason": "better auc", "shadow": False, "note": None},
    )

    async def scenario() -> RegistryEvent:
        async with await connect(nats_url, timeout=WAIT_S, name="test") as bus:
            await declare_topology(bus)
            async with await subscribe_events(bus) as stream:
                ack = await publish_event(bus, sent)
                assert ack.stream == EVENTS_STREAM and not ack.duplicate
                return await asyncio.wait_for(anext(stream), WAIT_S)

    received = run(scenario())
    assert received == sent
    assert sent.subject() == f"aimesh.events.registry.alias.moved.{sent.model}"


def test_duplicate_event_ids_are_stored_once(nats_url: str) -> None:
    model = unique_model()
    first, after = event(model), event(model)

    async def scenario() -> list[RegistryEvent]:
        async with await connect(nats_url, timeout=WAIT_S, name="test") as bus:
            await declare_topology(bus)
            subject = f"aimesh.events.registry.*.*.{model}"
            async with await subscribe_events(bus, subject) as stream:
                one = await publish_event(bus, first)
                two = await publish_event(bus, first)
                assert two.duplicate and two.seq == one.seq
                await publish_event(bus, after)
                return [await asyncio.wait_for(anext(stream), WAIT_S) for _ in range(2)]

    assert run(scenario()) == [first, after]


def test_malformed_message_is_logged_and_skipped(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = unique_model()
    good = event(model)

    async def scenario() -> RegistryEvent:
        async with await connect(nats_url, timeout=WAIT_S, name="test") as bus:
            await declare_topology(bus)
            subject = f"aimesh.events.registry.model.created.{model}"
            async with await subscribe_events(bus, subject) as stream:
                await bus.js.publish(subject, b"not json")
                await bus.js.publish(subject, b'{"type": "registry", "kind": "planet"}')
                await publish_event(bus, good)
                return await asyncio.wait_for(anext(stream), WAIT_S)

    with caplog.at_level(logging.WARNING, logger="aimesh.bus"):
        assert run(scenario()) == good
    assert sum("malformed event" in r.message for r in caplog.records) == 2


def test_subscriber_can_replay_stored_events(nats_url: str) -> None:
    model = unique_model()
    earlier = event(model)

    async def scenario() -> RegistryEvent:
        async with await connect(nats_url, timeout=WAIT_S, name="test") as bus:
            await declare_topology(bus)
            await publish_event(bus, earlier)
            subject = f"aimesh.events.registry.model.created.{model}"
            async with await subscribe_events(bus, subject, deliver_new_only=False) as stream:
                return await asyncio.wait_for(anext(stream), WAIT_S)

    assert run(scenario()) == earlier


class JobEvent(Event, frozen=True, kw_only=True, tag="job"):
    """A later event family, declared the way the jobs package would."""

    job: str
    state: Literal["queued", "done"]

    def subject(self) -> str:
        return f"aimesh.events.jobs.{self.state}.{self.job}"


def test_another_event_family_uses_the_same_helpers(nats_url: str) -> None:
    sent = JobEvent(job=uuid.uuid4().hex, state="done")

    async def scenario() -> JobEvent:
        async with await connect(nats_url, timeout=WAIT_S, name="test") as bus:
            await declare_topology(bus)
            subject = f"aimesh.events.jobs.*.{sent.job}"
            async with await subscribe_events(bus, subject, event_type=JobEvent) as stream:
                await publish_event(bus, sent)
                return await asyncio.wait_for(anext(stream), WAIT_S)

    assert run(scenario()) == sent


def test_publishing_without_a_stream_raises_bus_unavailable(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        async with await connect(url, timeout=WAIT_S, name="test") as bus:
            with pytest.raises(BusUnavailable, match="declare the topology"):
                await publish_event(bus, event())

    with EmbeddedNats(tmp_path) as server:
        run(scenario(server.url))


def test_events_round_trip_with_their_family_tag() -> None:
    sent = event(version=1)
    wire = msgspec.json.decode(msgspec.json.encode(sent))
    assert wire["type"] == "registry"
    assert msgspec.json.decode(msgspec.json.encode(sent), type=RegistryEvent) == sent


@pytest.mark.parametrize("model", ["a.b", "a b", "a*", "a>", ""])
def test_event_refuses_a_model_name_that_would_break_its_subject(model: str) -> None:
    with pytest.raises(ValueError, match="subject token"):
        event(model)


def test_a_record_kinds_event_is_one_any_process_can_decode() -> None:
    """Kinds are defined in code, so a subscriber may not know one: it decodes it all the same."""
    sent = RegistryEvent(
        kind="pipeline", action="updated", model="fraud-check", actor="t", data={"revision": 3}
    )
    assert sent.subject() == "aimesh.events.registry.pipeline.updated.fraud-check"
    assert msgspec.json.decode(msgspec.json.encode(sent), type=RegistryEvent) == sent
    for kind in ["Pipeline", "a.b", "a*", "a>", "", "x" * 33, "_x"]:
        with pytest.raises(ValueError, match="lowercase token"):
            RegistryEvent(kind=kind, action="created", model="m", actor="t")
        wire = msgspec.json.encode(sent).replace(b'"pipeline"', msgspec.json.encode(kind))
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(wire, type=RegistryEvent)


def test_event_refuses_a_time_without_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        event(at=datetime(2024, 1, 1))


# The CLI ----------------------------------------------------------------------------------


def aimesh(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from aimesh.cli import main; main()", *args],
        env=cli_env(home),
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_starts_reports_and_stops_the_bus(home: Settings) -> None:
    started = aimesh(home.home_dir, "bus", "start")
    assert started.returncode == 0, started.stderr
    assert "nats://127.0.0.1:" in started.stdout

    status = aimesh(home.home_dir, "bus", "status", "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["running"] is True and state["mode"] == "embedded"
    assert port_of(state["url"]) != 4222
    assert state["url"] in started.stdout

    async def streams() -> list[str]:
        async with await open_bus(home, name="test") as bus:
            return sorted([await bus.js.find_stream_name_by_subject("aimesh.jobs.x")])

    assert run(streams()) == [JOBS_STREAM]  # `start` declared the topology

    stopped = aimesh(home.home_dir, "bus", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert process_gone(state["pid"])

    again = aimesh(home.home_dir, "bus", "status")
    assert again.returncode == 0 and "no embedded bus" in again.stdout


@pytest.mark.parametrize("command", ["start", "status", "stop"])
def test_cli_commands_have_help(tmp_path: Path, command: str) -> None:
    shown = aimesh(tmp_path, "bus", command, "--help")
    assert shown.returncode == 0
    assert len(shown.stdout.strip().splitlines()) > 3

"""Who may use the bus, against the real bundled nats-server: the embedded bus's generated
token, an external server's user/password, token and TLS, the home's private files, and
the limits every stream and bucket has (a full job queue refuses jobs clearly)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import nats
import nats.errors
import nkeys
import pytest
from _services import free_port, start
from nats.js.api import DiscardPolicy, RetentionPolicy
from pydantic import SecretStr

from aimesh.bus import (
    BUCKETS,
    DLQ_STREAM,
    EVENTS_STREAM,
    JOB_DATA_BUCKET,
    JOBS_BUCKET,
    JOBS_STREAM,
    EmbeddedNats,
    connect,
    declare_topology,
    embedded_bus_status,
    ensure_bus,
    nats_server_binary,
    open_bus,
    stop_embedded_bus,
)
from aimesh.bus.home import ServerRecord
from aimesh.bus.server import probe_server
from aimesh.config import AuthSettings, BusSettings, Settings
from aimesh.errors import BusUnavailable, ConfigError, QueueFull, Unauthorized
from aimesh.jobs import JobClient, JobSpec
from aimesh.registry import KeyCreate, KeyWatch, LocalRegistry
from aimesh.registry.outbox import flush_outbox

T = TypeVar("T")
WAIT_S = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env["AIMESH_HOME"] = str(home)
    return env


def aimesh(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from aimesh.cli import main; main()", *args],
        env=cli_env(home),
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def refused_by_nats(url: str, **credentials: Any) -> str:
    """Connect with nats-py alone; the server's refusal, as nats-py reports it."""
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0, **credentials
        )
    except (nats.errors.Error, OSError) as exc:
        return str(exc)
    await nc.close()
    return "connected"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One home whose embedded bus runs for the module (started by its first user)."""
    settings = Settings(home=tmp_path_factory.mktemp("auth") / "home", bus=BusSettings())
    try:
        yield settings
    finally:
        stop_embedded_bus(settings)


# The embedded bus of a home -------------------------------------------------------------


def test_the_embedded_bus_refuses_a_client_without_the_homes_token(home: Settings) -> None:
    url = ensure_bus(home)
    token = (home.bus_dir / "token").read_text().strip()
    assert probe_server(url) is not None and probe_server(url).auth_required  # type: ignore[union-attr]

    assert "Authorization Violation" in run(refused_by_nats(url))
    assert "Authorization Violation" in run(refused_by_nats(url, token="not-the-token"))
    assert run(refused_by_nats(url, token=token)) == "connected"

    started = time.monotonic()
    with pytest.raises(BusUnavailable) as caught:
        run(connect(url, timeout=WAIT_S, name="test"))
    assert time.monotonic() - started < 3.0  # refused at once, not at the deadline
    assert caught.value.code == "bus_unavailable"
    assert "authorization failed" in caught.value.message
    assert "no credentials were given" in caught.value.message


def test_processes_of_the_home_connect_with_its_token(home: Settings) -> None:
    code = (
        "import asyncio\n"
        "from aimesh.bus import declare_topology, open_bus\n"
        "from aimesh.config import load_settings\n"
        "async def main():\n"
        "    async with await open_bus(load_settings(), name='other') as bus:\n"
        "        await declare_topology(bus)\n"
        "        print(await bus.js.find_stream_name_by_subject('aimesh.jobs.x'))\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=cli_env(home.home_dir),
        cwd=home.home_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == JOBS_STREAM


def test_the_homes_secrets_are_private_and_never_on_a_command_line(home: Settings) -> None:
    ensure_bus(home)
    token = (home.bus_dir / "token").read_text().strip()
    assert len(token) >= 32
    assert mode(home.home_dir) == 0o700
    assert mode(home.bus_dir) == 0o700
    assert mode(home.bus_dir / "token") == 0o600
    assert mode(home.bus_dir / "nats-server.conf") == 0o600
    pid = embedded_bus_status(home).pid
    assert pid is not None
    assert token not in Path(f"/proc/{pid}/cmdline").read_text()
    assert token not in (home.bus_dir / "nats-server.log").read_text()


def test_aimesh_bus_status_says_credentials_are_on_and_never_shows_the_token(
    home: Settings,
) -> None:
    ensure_bus(home)
    token = (home.bus_dir / "token").read_text().strip()
    shown = aimesh(home.home_dir, "bus", "status")
    assert shown.returncode == 0, shown.stderr
    assert "credentials: on (token)" in shown.stdout
    as_json = aimesh(home.home_dir, "bus", "status", "--json")
    state = json.loads(as_json.stdout)
    assert state["credentials"] == ["token"] and state["auth_required"] is True
    for out in (shown.stdout, shown.stderr, as_json.stdout, as_json.stderr):
        assert token not in out


def test_a_home_made_with_loose_modes_is_tightened(tmp_path: Path) -> None:
    parent = tmp_path / "projects"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)
    settings = Settings(home=parent / "home", bus=BusSettings())
    settings.bus_dir.mkdir(parents=True)
    settings.home_dir.chmod(0o755)
    settings.bus_dir.chmod(0o777)
    (settings.bus_dir / "token").write_text("an-old-token-copied-by-hand-0123456789\n")
    (settings.bus_dir / "token").chmod(0o644)
    try:
        url = ensure_bus(settings)
        assert mode(settings.home_dir) == 0o700
        assert mode(settings.bus_dir) == 0o700
        assert mode(settings.bus_dir / "token") == 0o600
        assert mode(parent) == 0o755  # the user's folder, not aimesh's: left alone

        async def scenario() -> None:
            async with await open_bus(settings, name="test") as bus:
                assert bus.url == url

        run(scenario())
    finally:
        stop_embedded_bus(settings)


def test_a_command_makes_the_home_private_before_it_writes_there(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert aimesh(home, "bus", "status").returncode == 0
    assert mode(home) == 0o700
    home.chmod(0o755)  # loosened by hand, or made by an older release
    assert aimesh(home, "bus", "status").returncode == 0
    assert mode(home) == 0o700


def test_a_server_without_credentials_left_by_an_older_release_is_restarted_with_them(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", bus=BusSettings())
    old = EmbeddedNats(settings.bus_dir, detached=True)  # no token, as before credentials
    old.start()
    try:
        record = ServerRecord(
            url=old.url,
            monitor_url=old.monitor_url,
            pid=old.pid or 0,
            server_id=old.server_id,
            started=datetime.now(UTC),
        )
        (settings.bus_dir / "server.json").write_bytes(msgspec.json.encode(record))
        assert embedded_bus_status(settings).auth_required is False

        url = ensure_bus(settings)
        assert url == old.url  # the same port, so old clients find it (with the token)
        assert not old.running
        status = embedded_bus_status(settings)
        assert status.auth_required is True and status.pid != record.pid
        assert "Authorization Violation" in run(refused_by_nats(url))
    finally:
        old.stop()
        stop_embedded_bus(settings)


# An external server with credentials ------------------------------------------------------


class ExternalNats:
    """The bundled nats-server started here with a config of our own, like an operator's."""

    def __init__(self, folder: Path, config: str, *, scheme: str = "nats") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "server.conf"
        conf.write_text(config)
        self.folder = folder
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while probe_server(f"nats://127.0.0.1:{self.port}") is None:
            assert self.proc.poll() is None, "nats-server exited"
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalNats]:
    config = (
        'authorization { users: [ { user: "alice", password: "s3cret-pass" } ] }\n'
        "jetstream { store_dir: " + json.dumps(str(tmp_path_factory.mktemp("js"))) + " }\n"
    )
    server = ExternalNats(tmp_path_factory.mktemp("external"), config)
    try:
        yield server
    finally:
        server.stop()


def external(url: str, tmp_path: Path, **bus: Any) -> Settings:
    return Settings(home=tmp_path / "home", bus=BusSettings(url=url, **bus))


async def declare_and_name_jobs_stream(settings: Settings) -> str:
    async with await open_bus(settings, name="test") as bus:
        await declare_topology(bus)
        return str(await bus.js.find_stream_name_by_subject("aimesh.jobs.x"))


def test_an_external_server_with_user_and_password_works_through_settings(
    password_server: ExternalNats, tmp_path: Path
) -> None:
    settings = external(
        password_server.url, tmp_path, user="alice", password=SecretStr("s3cret-pass")
    )
    assert run(declare_and_name_jobs_stream(settings)) == JOBS_STREAM
    in_url = password_server.url.replace("://", "://alice:s3cret-pass@")
    assert run(declare_and_name_jobs_stream(external(in_url, tmp_path))) == JOBS_STREAM
    status = embedded_bus_status(settings)
    assert status.mode == "external" and status.running and status.auth_required
    assert status.credentials == ["user/password"]
    assert not (tmp_path / "home" / "bus").exists()  # an external bus needs no home token


def test_an_external_server_refuses_clearly_without_or_with_wrong_credentials(
    password_server: ExternalNats, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as without:
        run(declare_and_name_jobs_stream(external(password_server.url, tmp_path)))
    assert time.monotonic() - started < 3.0
    assert "authorization failed" in without.value.message
    assert "no credentials were given" in without.value.message

    wrong = external(password_server.url, tmp_path, user="alice", password=SecretStr("nope-x1"))
    with pytest.raises(BusUnavailable) as caught:
        run(declare_and_name_jobs_stream(wrong))
    assert "authorization failed" in caught.value.message
    assert "user/password" in caught.value.message
    assert "nope-x1" not in caught.value.message

    in_url = password_server.url.replace("://", "://alice:nope-x2@")
    with pytest.raises(BusUnavailable) as in_url_caught:
        run(declare_and_name_jobs_stream(external(in_url, tmp_path)))
    assert "authorization failed" in in_url_caught.value.message
    assert "nope-x2" not in in_url_caught.value.message


def test_the_cli_reports_a_refused_external_bus_in_one_line(
    password_server: ExternalNats, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "home") | {"AIMESH_BUS__URL": password_server.url}
    done = subprocess.run(
        [sys.executable, "-c", "from aimesh.cli import main; main()", "bus", "start"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "authorization failed" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_external_server_with_a_token_works_through_settings(tmp_path: Path) -> None:
    server = ExternalNats(
        tmp_path / "server",
        'authorization { token: "tok-123456" }\n'
        "jetstream { store_dir: " + json.dumps(str(tmp_path / "js")) + " }\n",
    )
    try:
        settings = external(server.url, tmp_path, token=SecretStr("tok-123456"))
        assert run(declare_and_name_jobs_stream(settings)) == JOBS_STREAM
        with pytest.raises(BusUnavailable, match="authorization failed"):
            run(declare_and_name_jobs_stream(external(server.url, tmp_path)))
    finally:
        server.stop()


def test_an_external_server_over_tls_is_trusted_through_its_ca_file(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    make = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*make, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = ExternalNats(
        tmp_path / "server",
        "tls { cert_file: " + json.dumps(str(cert)) + ", key_file: " + json.dumps(str(key))
        + " }\n"
        'authorization { token: "tls-tok-1" }\n'
        "jetstream { store_dir: " + json.dumps(str(tmp_path / "js")) + " }\n",
        scheme="tls",
    )  # fmt: skip
    try:
        settings = external(server.url, tmp_path, token=SecretStr("tls-tok-1"), tls_ca_file=cert)
        assert run(declare_and_name_jobs_stream(settings)) == JOBS_STREAM
        # Without the CA the server's certificate is not trusted: refused, clearly.
        untrusted = external(server.url, tmp_path, token=SecretStr("tls-tok-1"))
        with pytest.raises(BusUnavailable, match="within"):
            run(declare_and_name_jobs_stream(untrusted))
    finally:
        server.stop()


# Limits -----------------------------------------------------------------------------------


def test_every_stream_and_bucket_is_bounded_with_its_discard_policy(nats_url: str) -> None:
    async def scenario() -> None:
        async with await connect(nats_url, timeout=WAIT_S, name="test") as bus:
            await declare_topology(bus)
            events = (await bus.js.stream_info(EVENTS_STREAM)).config
            assert events.max_bytes == 1024**3 and events.discard == DiscardPolicy.OLD
            jobs = (await bus.js.stream_info(JOBS_STREAM)).config
            assert jobs.max_bytes == 1024**3 and jobs.discard == DiscardPolicy.NEW
            assert jobs.max_msgs == 1_000_000
            dlq = (await bus.js.stream_info(DLQ_STREAM)).config
            assert dlq.max_bytes == 256 * 1024**2 and dlq.discard == DiscardPolicy.OLD
            for bucket in BUCKETS:
                config = (await bus.js.stream_info(f"KV_{bucket.name}")).config
                assert config.max_bytes is not None and 0 < config.max_bytes <= 1024**3

    run(scenario())


def test_streams_made_by_an_older_release_get_their_limits_and_keep_their_jobs(
    tmp_path: Path,
) -> None:
    async def scenario(url: str) -> None:
        limits = BusSettings(jobs_max_bytes=64 * 1024**2, job_records_max_bytes=8 * 1024**2)
        async with await connect(url, timeout=WAIT_S, name="test", limits=limits) as bus:
            # As an older release declared it: a work queue with no limit.
            await bus.js.add_stream(
                name=JOBS_STREAM, subjects=["aimesh.jobs.>"], retention=RetentionPolicy.WORK_QUEUE
            )
            await bus.js.create_key_value(bucket=JOBS_BUCKET, history=5, ttl=7 * 24 * 3600)
            await bus.js.publish("aimesh.jobs.old", b"waiting")
            await declare_topology(bus)
            await declare_topology(bus)  # and again: nothing left to change
            jobs = await bus.js.stream_info(JOBS_STREAM)
            assert jobs.config.max_bytes == 64 * 1024**2
            assert jobs.config.discard == DiscardPolicy.NEW
            assert jobs.state.messages == 1
            records = await bus.js.stream_info(f"KV_{JOBS_BUCKET}")
            assert records.config.max_bytes == 8 * 1024**2
            data = await bus.js.stream_info(f"KV_{JOB_DATA_BUCKET}")
            assert data.config.max_bytes == 1024**3

    with EmbeddedNats(tmp_path) as server:
        run(scenario(server.url))


def test_a_full_job_queue_refuses_a_job_with_queue_full(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        limits = BusSettings(jobs_max_bytes=4096)
        async with await connect(url, timeout=WAIT_S, name="test", limits=limits) as bus:
            client = await JobClient.open(bus, Settings().jobs)
            try:
                accepted = []
                with pytest.raises(QueueFull) as caught:
                    for _ in range(100):  # each job is a few hundred bytes: 4 KiB fill soon
                        accepted.append(await client.submit(JobSpec(kind="slow", payload={})))
                assert 0 < len(accepted) < 100
                assert caught.value.code == "queue_full"
                assert "queue is full" in caught.value.message
                refused = await client.get(caught.value.details["job_id"])
                assert refused.state == "failed"
                assert refused.error is not None and refused.error.code == "queue_full"
                # The jobs already queued are still there, waiting for a worker.
                assert (await client.get(accepted[0].id)).state == "queued"
            finally:
                await client.close()

    with EmbeddedNats(tmp_path) as server:
        run(scenario(server.url))


def test_the_jobs_service_of_a_home_answers_503_queue_full_when_its_queue_is_full(
    tmp_path: Path,
) -> None:
    # No bus configured: the service starts the home's embedded bus and gets in with the
    # home's token; the home's settings make its work queue tiny.
    home = tmp_path / "home"
    env = cli_env(home) | {"AIMESH_BUS__JOBS_MAX_BYTES": "4096"}
    port = free_port()
    service = start(
        ["jobs", "serve", "--port", str(port)],
        env=env,
        log=tmp_path / "jobs.log",
        http=f"http://127.0.0.1:{port}",
        ready_path="/health",
    )
    try:
        statuses = []
        with httpx.Client(base_url=service.http, timeout=WAIT_S) as http:
            for _ in range(100):
                answer = http.post("/api/jobs", json={"kind": "slow", "payload": {}})
                statuses.append(answer.status_code)
                if answer.status_code != 202:
                    break
        assert statuses[:-1] == [202] * (len(statuses) - 1) and len(statuses) > 1
        assert answer.status_code == 503
        assert answer.json()["code"] == "queue_full"
        assert "queue is full" in answer.json()["error"]
    finally:
        service.stop()
        stop_embedded_bus(Settings(home=home))


def test_an_nkey_or_creds_file_that_cannot_be_used_is_a_clear_config_error(
    password_server: ExternalNats, tmp_path: Path
) -> None:
    missing = external(password_server.url, tmp_path, nkey_seed_file=tmp_path / "none.nk")
    with pytest.raises(ConfigError, match=r"bus.nkey_seed_file .* does not exist"):
        run(declare_and_name_jobs_stream(missing))
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    given = external(password_server.url, tmp_path, creds_file=creds)
    with pytest.raises((BusUnavailable, ConfigError)):  # a creds file the server does not know
        run(declare_and_name_jobs_stream(given))


def _nkey_user(folder: Path, name: str) -> tuple[Path, str]:
    """A new NKey user: its seed file (0600, as `nsc`/`nk` write one) and public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = folder / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path, nkeys.from_seed(seed).public_key.decode()


def test_an_external_server_with_nkey_users_works_through_the_seed_file(tmp_path: Path) -> None:
    alice_seed, alice = _nkey_user(tmp_path, "alice")
    mallory_seed, _ = _nkey_user(tmp_path, "mallory")  # not a user of the server
    config = (
        "authorization { users: [ { nkey: " + json.dumps(alice) + " } ] }\n"
        "jetstream { store_dir: " + json.dumps(str(tmp_path / "js")) + " }\n"
    )
    server = ExternalNats(tmp_path / "external", config)
    try:
        seeded = external(server.url, tmp_path, nkey_seed_file=alice_seed)
        assert run(declare_and_name_jobs_stream(seeded)) == JOBS_STREAM
        with pytest.raises(BusUnavailable, match="authorization failed"):
            run(declare_and_name_jobs_stream(external(server.url, tmp_path)))
        with pytest.raises(BusUnavailable, match="authorization failed"):
            run(
                declare_and_name_jobs_stream(
                    external(server.url, tmp_path, nkey_seed_file=mallory_seed)
                )
            )
    finally:
        server.stop()


def test_services_hear_key_events_through_the_token_of_the_homes_bus(home: Settings) -> None:
    """A key made by the CLI takes effect on its event, not on the (hourly) reload."""
    settings = home.model_copy(update={"auth": AuthSettings(reload_s=3600)})
    registry = LocalRegistry.from_settings(settings, actor="test")
    polls = itertools.count()

    def make(name: str) -> str:
        made = registry.create_key(KeyCreate(name=name, scopes=["read"]))
        flush_outbox(registry.store, settings)  # as `aimesh keys create` does
        return made.key

    def knows(watch: KeyWatch, key: str) -> bool:
        try:
            # A client of its own each time: polls with a key not known yet are no guesses.
            client = f"poll-{next(polls)}"
            return watch.keyring.authenticate(key, client=client).name != ""
        except Unauthorized:
            return False

    async def main() -> None:
        early = await asyncio.to_thread(make, "early")
        watch = KeyWatch(settings)
        listening = asyncio.create_task(watch.run())
        try:
            # Read on subscribing ("whatever changed before we listened"): it is listening.
            while not knows(watch, early):
                await asyncio.sleep(0.05)
            late = await asyncio.to_thread(make, "late")
            while not knows(watch, late):
                await asyncio.sleep(0.05)
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    try:
        run(asyncio.wait_for(main(), WAIT_S * 3))
    finally:
        registry.close()

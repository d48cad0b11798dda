"""The CLI as a user runs it: local store, then against a running registry service."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _services import run_aimesh

from aimesh.bus import RegistryEvent, connect, subscribe_events


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cli:
    """Runs ``aimesh`` in a subprocess with its own home."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
        self.env = {**inherited, "AIMESH_HOME": str(home), **(env or {})}

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return run_aimesh(self.env, *args, ok=ok)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path / "home")
    yield runner
    runner("bus", "stop", ok=False)


def test_push_list_show_alias_locally(cli: Cli, fraud_skops: Path) -> None:
    out = cli(
        "models",
        "push",
        "fraud",
        str(fraud_skops),
        "--alias",
        "champion",
        "--metric",
        "auc=0.93",
        "--dataset",
        "tx@3",
    ).stdout
    assert "fraud@1" in out and "champion" in out
    cli("models", "push", "fraud", str(fraud_skops))
    assert "fraud" in cli("models", "list").stdout
    shown = cli("models", "show", "fraud").stdout
    assert "input-0 FP64 [-1, 30]" in shown and "auc=0.93" in shown
    assert "tx@3" in cli("models", "show", "fraud@champion").stdout
    assert "champion -> version 2" in cli("models", "alias", "fraud", "champion", "2").stdout
    history = cli("models", "history", "fraud").stdout
    assert "alias moved" in history
    dest = cli.home / "out.skops"
    cli("models", "download", "fraud@champion", str(dest))
    assert dest.read_bytes() == fraud_skops.read_bytes()


def test_rollback_moves_the_alias_back_or_says_why_not(cli: Cli, fraud_skops: Path) -> None:
    for _ in range(2):
        cli("models", "push", "fraud", str(fraud_skops), "--alias", "champion")
    refused = cli("models", "rollback", "fraud", "--from", "1", ok=False)
    assert refused.returncode == 1 and "alias_moved" in refused.stderr
    out = cli("models", "rollback", "fraud").stdout
    assert "fraud@champion -> version 1 (rolled back from 2)" in out
    assert "champion->1" in cli("models", "list").stdout
    none = cli("models", "rollback", "fraud", "--alias", "champion", ok=False)
    assert none.returncode == 1 and "no_previous_version" in none.stderr
    assert "Traceback" not in none.stderr and len(none.stderr.strip().splitlines()) == 1
    unknown = cli("models", "rollback", "fraud", "-a", "nobody", ok=False)
    assert unknown.returncode == 1 and "alias_not_found" in unknown.stderr


def test_bad_input_is_one_red_line_and_exit_1(cli: Cli, fraud_skops: Path, tmp_path: Path) -> None:
    cli("models", "push", "fraud", str(fraud_skops))
    unknown = cli("models", "show", "ghost", ok=False)
    assert unknown.returncode == 1 and "model_not_found" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert cli("models", "alias", "fraud", "champion", "7", ok=False).returncode == 1
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps({"not": "a model"}))
    unsafe = cli("models", "push", "fraud", str(pkl), ok=False)
    assert unsafe.returncode == 1 and "trust_disabled" in unsafe.stderr
    odd = tmp_path / "model.weird"
    odd.write_bytes(b"x")
    assert "--framework" in cli("models", "push", "fraud", str(odd), ok=False).stderr
    assert "version" in cli("models", "show", "fraud").stdout  # nothing else was stored
    assert "fraud@2" not in cli("models", "show", "fraud@latest").stdout


def test_trusted_pickle_is_recorded_and_shown(cli: Cli, tmp_path: Path) -> None:
    from sklearn.dummy import DummyClassifier

    pkl = tmp_path / "dummy.pkl"
    pkl.write_bytes(pickle.dumps(DummyClassifier().fit([[0.0], [1.0]], [0, 1])))
    trusting = Cli(cli.home, {"AIMESH_REGISTRY__ALLOW_CODE_ARTIFACTS": "true"})
    trusting("models", "push", "dummy", str(pkl), "--trust")
    shown = cli("models", "show", "dummy@1").stdout
    assert "code in this artifact runs" in shown and "trusted by" in shown


@pytest.fixture
def registry_service(tmp_path: Path, nats_url: str) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "AIMESH_HOME": str(tmp_path / "server-home"),
        "AIMESH_BUS__URL": nats_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "aimesh", "registry", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "registry service did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_against_a_running_registry_publishes_events(
    registry_service: str, tmp_path: Path, fraud_skops: Path, nats_url: str
) -> None:
    cli = Cli(tmp_path / "client-home", env={"AIMESH_REGISTRY__URL": registry_service})

    async def watch() -> list[RegistryEvent]:
        async with await connect(nats_url, timeout=2, name="test") as bus:
            events = await subscribe_events(bus, "aimesh.events.registry.>")
            await asyncio.to_thread(
                cli, "models", "push", "fraud", str(fraud_skops), "--alias", "champion"
            )
            seen: list[RegistryEvent] = []
            async with events, asyncio.timeout(10):
                async for event in events:
                    seen.append(event)
                    if event.kind == "alias":
                        return seen
        return []

    seen = asyncio.run(watch())
    assert [(e.kind, e.action) for e in seen] == [
        ("model", "created"),
        ("version", "created"),
        ("alias", "moved"),
    ]
    assert seen[-1].model == "fraud" and seen[-1].alias == "champion" and seen[-1].version == 1
    assert "champion" in cli("models", "list").stdout
    # The client's home holds no registry of its own: everything went through the service.
    assert not (tmp_path / "client-home" / "registry.db").exists()


def test_cli_rollback_through_a_running_registry_is_announced(
    registry_service: str, tmp_path: Path, fraud_skops: Path, nats_url: str
) -> None:
    cli = Cli(tmp_path / "client-home", env={"AIMESH_REGISTRY__URL": registry_service})
    for _ in range(2):
        cli("models", "push", "fraud", str(fraud_skops), "--alias", "champion")

    async def rollback() -> tuple[str, RegistryEvent | None]:
        async with await connect(nats_url, timeout=2, name="test") as bus:
            subject = "aimesh.events.registry.alias.moved.fraud"
            events = await subscribe_events(bus, subject)
            done = await asyncio.to_thread(cli, "models", "rollback", "fraud", "--from", "2")
            async with events, asyncio.timeout(10):
                async for event in events:
                    return done.stdout, event
        return done.stdout, None

    out, event = asyncio.run(rollback())
    assert "fraud@champion -> version 1 (rolled back from 2)" in out
    assert event is not None and event.version == 1 and event.alias == "champion"
    assert event.data == {"previous": 2, "rollback": True, "from": 2, "to": 1}
    assert event.actor.startswith("operator")  # who, as the service recorded it


def _evil_pickle(sentinel: Path) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (eval, (f"__import__('pathlib').Path({str(sentinel)!r}).write_text('ran')",))

    return pickle.dumps(Payload())


def _blobs(home: Path) -> set[str]:
    return {p.name for p in (home / "artifacts" / "sha256").rglob("*") if p.is_file()}


def test_refused_push_leaves_no_model_and_no_blob(cli: Cli, tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(_evil_pickle(sentinel))
    for extra in ([], ["--trust"]):
        refused = cli("models", "push", "evil", str(evil), *extra, ok=False)
        assert refused.returncode == 1 and "trust_disabled" in refused.stderr
    assert "evil" not in cli("models", "list").stdout
    assert not sentinel.exists()
    assert not (cli.home / "artifacts" / "sha256").exists() or _blobs(cli.home) == set()


def test_damaged_blob_is_repaired_by_pushing_the_same_file(cli: Cli, fraud_skops: Path) -> None:
    cli("models", "push", "fraud", str(fraud_skops))
    (blob,) = [p for p in (cli.home / "artifacts" / "sha256").rglob("*") if p.is_file()]
    blob.write_bytes(b"bit rot" + blob.read_bytes()[7:])
    dest = cli.home / "out.skops"
    broken = cli("models", "download", "fraud@1", str(dest), ok=False)
    assert broken.returncode == 1 and "artifact_tampered" in broken.stderr
    cli("models", "push", "fraud", str(fraud_skops))  # the repair: one command
    cli("models", "download", "fraud@1", str(dest))
    assert dest.read_bytes() == fraud_skops.read_bytes()


def test_registry_gc_removes_what_no_version_uses(cli: Cli, fraud_skops: Path) -> None:
    from aimesh.config import Settings
    from aimesh.registry import LocalRegistry

    cli("models", "push", "fraud", str(fraud_skops))
    local = LocalRegistry.from_settings(Settings(home=cli.home))
    try:
        orphan = local.upload_chunks([b"an upload nobody registered"]).sha256
        old = time.time() - 7200
        os.utime(local.artifacts._blob(orphan), (old, old))
    finally:
        local.close()
    dry = cli("registry", "gc", "--dry-run").stdout
    assert f"would remove artifact {orphan}" in dry and "would free" in dry
    assert orphan in _blobs(cli.home)
    done = cli("registry", "gc").stdout
    assert f"removed artifact {orphan}" in done and "27 bytes freed" in done
    assert "1 artifact(s) in use" in done
    assert orphan not in _blobs(cli.home) and len(_blobs(cli.home)) == 1


def test_cli_against_a_running_registry_refuses_trust_it_does_not_allow(
    registry_service: str, tmp_path: Path
) -> None:
    remote = Cli(tmp_path / "client-home", env={"AIMESH_REGISTRY__URL": registry_service})
    sentinel = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(_evil_pickle(sentinel))
    refused = remote("models", "push", "evil", str(evil), "--trust", ok=False)
    assert refused.returncode == 1 and "trust_disabled" in refused.stderr
    assert "evil" not in remote("models", "list").stdout
    assert not sentinel.exists()
    assert "0 file(s)" in remote("registry", "gc").stdout  # the refusal left no blob behind

"""Trust is the operator's decision, nothing is half-written, garbage is collected.

The attack of issue 11 end to end against the registry's REST API: artifacts whose loading
runs code (a pickle, a Python file) that would write a sentinel file, pushed with
``trusted: true``. Refused by policy (400) or for a non-admin identity (403), no code runs
and nothing is stored; accepted from an admin under the policy, and then inspected in a
process of its own, never the registry's.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from _services import wait_for
from fastapi.testclient import TestClient

from _bad_paths import BAD_NAMES
from aimesh.auth import Identity
from aimesh.config import Settings
from aimesh.errors import ArtifactError, Forbidden, TrustDisabled
from aimesh.registry import KeyCreate, LocalRegistry, VersionCreate
from aimesh.registry.app import create_app

API = "/api/registry"
KEYS: dict[str, str] = {}
"""Real API keys made in each registry before it starts, by ``name:scope``; the operator's
admin key is sent by default, a test names another identity to act as it."""
IDENTITIES = ("ann:admin", "ci:write")

SECRET = "AIMESH_TEST_REGISTRY_SECRET"


def _keyed_client(settings: Settings) -> TestClient:
    """The registry service of ``settings``, with the keys of :data:`IDENTITIES` made first."""
    registry = LocalRegistry.from_settings(settings, actor="test")
    try:
        for identity in IDENTITIES:
            name, _, scope = identity.partition(":")
            made = registry.create_key(KeyCreate(name=name, scopes=[scope]))
            KEYS[f"{settings.home}:{identity}"] = made.key
    finally:
        registry.close()
    app = create_app(settings, publish_events=False)
    return TestClient(app, headers={"x-api-key": KEYS[f"{settings.home}:ann:admin"]})


def _as(client: TestClient, identity: str) -> dict[str, str]:
    """The headers that make a request ``identity``'s (``name:scope``) on ``client``."""
    home = next(k.rsplit(":", 2)[0] for k, v in KEYS.items() if v == client.headers["x-api-key"])
    return {"x-api-key": KEYS[f"{home}:{identity}"]}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """Two registries: one with the default policy (no code), one allowing code artifacts."""
    root = tmp_path_factory.mktemp("trust")
    forbidding = Settings(home=root / "forbidding", registry={"gc_interval_s": 0})
    allowing = Settings(
        home=root / "allowing",
        registry={"allow_code_artifacts": True, "gc_interval_s": 0, "inspect_timeout_s": 60},
    )
    with _keyed_client(forbidding) as off, _keyed_client(allowing) as on:
        yield {"off": off, "on": on}


def _report(sentinel: Path) -> str:
    """Python source that writes this process's pid and environment names to ``sentinel``."""
    return (
        f"__import__('pathlib').Path({str(sentinel)!r}).write_text(__import__('json').dumps("
        "{'pid': __import__('os').getpid(), 'env': sorted(__import__('os').environ)}))"
    )


def _evil_pickle(sentinel: Path) -> bytes:
    """A pickle that writes the sentinel when unpickled, then is a fitted classifier."""
    model = (
        "__import__('sklearn.dummy', fromlist=['DummyClassifier'])"
        ".DummyClassifier().fit([[0.0], [1.0]], [0, 1])"
    )

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (eval, (f"({_report(sentinel)}, {model})[1]",))

    return pickle.dumps(Payload())


def _evil_python(sentinel: Path) -> bytes:
    """A Python model file that writes the sentinel when it is run."""
    return f"""
{_report(sentinel)}


class Model:
    signature = {{
        "inputs": [{{"name": "x", "datatype": "FP64", "shape": [-1, 1]}}],
        "outputs": [{{"name": "y", "datatype": "FP64", "shape": [-1, 1]}}],
    }}

    def load(self):
        pass

    def predict(self, inputs):
        return {{"y": inputs["x"] * 2}}
""".encode()


EVIL = {"pickle": _evil_pickle, "python": _evil_python}


def _upload(client: TestClient, data: bytes) -> str:
    r = client.post(f"{API}/artifacts", content=data)
    assert r.status_code == 201, r.text
    sha: str = r.json()["sha256"]
    return sha


def _push(
    client: TestClient,
    name: str,
    sha: str,
    framework: str,
    identity: str | None = None,
    **kw: object,
) -> tuple[int, dict[str, object]]:
    headers = _as(client, identity) if identity else {}
    body = {"artifact_sha256": sha, "framework": framework, "create_model": True, **kw}
    r = client.post(f"{API}/models/{name}/versions", json=body, headers=headers)
    payload: dict[str, object] = r.json()
    return r.status_code, payload


def _models(client: TestClient) -> list[str]:
    return [m["name"] for m in client.get(f"{API}/models").json()]


def _stored(client: TestClient, sha: str) -> bool:
    return client.get(f"{API}/artifacts/{sha}").status_code == 200


def _blob(settings_home: Path, sha: str) -> Path:
    return settings_home / "artifacts" / "sha256" / sha[:2] / sha


@pytest.mark.parametrize("framework", ["pickle", "python"])
def test_code_artifact_with_trusted_true_is_refused_by_the_default_policy(
    stacks: dict[str, TestClient], tmp_path: Path, framework: str
) -> None:
    client = stacks["off"]
    sentinel = tmp_path / "ran"
    before = _models(client)
    sha = _upload(client, EVIL[framework](sentinel))
    status, body = _push(client, f"evil-{framework}", sha, framework, trusted=True)
    assert (status, body["code"]) == (400, "trust_disabled")
    assert "allow_code_artifacts" in str(body["error"])
    assert not sentinel.exists()
    assert _models(client) == before
    assert not _stored(client, sha)


def test_extra_skops_types_are_refused_by_the_default_policy(
    stacks: dict[str, TestClient], fraud_skops: Path
) -> None:
    client = stacks["off"]
    sha = _upload(client, fraud_skops.read_bytes())
    status, body = _push(client, "wide", sha, "sklearn", trusted_types=["os.system"])
    assert (status, body["code"]) == (400, "trust_disabled")
    assert "wide" not in _models(client) and not _stored(client, sha)
    # scikit-learn's own structures are no widening: a training worker may name them.
    _upload(client, fraud_skops.read_bytes())
    status, body = _push(
        client, "forest", sha, "sklearn", trusted_types=["sklearn.tree._tree.Tree"]
    )
    assert status == 201, body
    assert body["trusted_by"] is None


@pytest.mark.parametrize("framework", ["pickle", "python"])
def test_code_artifact_from_a_non_admin_identity_is_forbidden_when_the_policy_allows(
    stacks: dict[str, TestClient], tmp_path: Path, framework: str
) -> None:
    client = stacks["on"]
    sentinel = tmp_path / "ran"
    before = _models(client)
    sha = _upload(client, EVIL[framework](sentinel))
    status, body = _push(client, "evil", sha, framework, "ci:write", trusted=True)
    assert (status, body["code"]) == (403, "forbidden")
    assert not sentinel.exists()
    assert _models(client) == before
    assert not _stored(client, sha)


def test_non_admin_in_process_caller_is_forbidden_and_nothing_runs(
    tmp_path: Path, fraud_skops: Path
) -> None:
    settings = Settings(home=tmp_path / "home", registry={"allow_code_artifacts": True})
    registry = LocalRegistry.from_settings(settings)
    try:
        sentinel = tmp_path / "ran"
        art = registry.upload_chunks([_evil_pickle(sentinel)])
        spec = VersionCreate(
            artifact_sha256=art.sha256, framework="pickle", trusted=True, create_model=True
        )
        with pytest.raises(Forbidden):
            registry.create_version("evil", spec, caller=Identity.of("ci", ["write"]))
        assert not sentinel.exists()
        assert registry.list_models() == []
        assert not registry.artifacts.exists(art.sha256)
        off = LocalRegistry.from_settings(Settings(home=tmp_path / "home"))
        art = off.upload_chunks([_evil_pickle(sentinel)])
        with pytest.raises(TrustDisabled):
            off.create_version("evil", spec)  # even the local operator: policy comes first
        assert not sentinel.exists() and not off.artifacts.exists(art.sha256)
        off.close()
    finally:
        registry.close()


@pytest.mark.parametrize("framework", ["pickle", "python"])
def test_admin_code_artifact_is_inspected_in_another_process_without_secrets(
    stacks: dict[str, TestClient],
    tmp_path: Path,
    framework: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET, "do-not-pass-me-on")
    client = stacks["on"]
    sentinel = tmp_path / "ran"
    sha = _upload(client, EVIL[framework](sentinel))
    status, body = _push(client, f"trusted-{framework}", sha, framework, "ann:admin", trusted=True)
    assert status == 201, body
    assert body["trusted"] is True and body["trusted_by"] == "ann"
    ran = json.loads(sentinel.read_text())
    # TestClient runs the registry in this very process: the artifact ran elsewhere.
    assert ran["pid"] != os.getpid()
    assert SECRET not in ran["env"]
    assert not any(name.startswith("AIMESH_") for name in ran["env"])
    history = client.get(f"{API}/models/trusted-{framework}/history").json()
    assert history[0]["data"]["trusted_by"] == "ann"


def test_admin_pickle_that_cannot_be_read_is_refused_and_leaves_nothing(
    stacks: dict[str, TestClient], tmp_path: Path
) -> None:
    client = stacks["on"]
    before = _models(client)
    sha = _upload(client, b"\x80\x05 not really a pickle")
    status, body = _push(client, "broken", sha, "pickle", "ann:admin", trusted=True)
    assert (status, body["code"]) == (422, "artifact_invalid")
    assert str(tmp_path.parent) not in json.dumps(body)  # no server path in the body
    assert "/artifacts/" not in json.dumps(body)
    assert _models(client) == before and not _stored(client, sha)


def test_inspection_past_its_timeout_is_refused(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", registry={"allow_code_artifacts": True, "inspect_timeout_s": 1}
    )
    registry = LocalRegistry.from_settings(settings)
    try:

        class Sleeper:
            def __reduce__(self) -> tuple[object, tuple[str]]:
                return (eval, ("__import__('time').sleep(60)",))

        art = registry.upload_chunks([pickle.dumps(Sleeper())])
        spec = VersionCreate(
            artifact_sha256=art.sha256, framework="pickle", trusted=True, create_model=True
        )
        started = time.monotonic()
        with pytest.raises(ArtifactError, match="longer than 1 s"):
            registry.create_version("slow", spec)
        assert time.monotonic() - started < 30
        assert registry.list_models() == []
    finally:
        registry.close()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_that_look_like_paths_are_refused_and_write_nothing(
    stacks: dict[str, TestClient], fraud_skops: Path, tmp_path: Path, bad: str
) -> None:
    client = stacks["off"]
    home = Path(str(client.app.state.registry.artifacts.url))  # type: ignore[attr-defined]
    outside = home.parent.parent
    sha = _upload(client, fraud_skops.read_bytes())
    before_models, before_files = _models(client), _files(outside) - _files(home.parent)
    answers = [
        client.post(f"{API}/models", json={"name": bad}),
        client.post(
            f"{API}/models/{quote(bad, safe='')}/versions",
            json={"artifact_sha256": sha, "framework": "sklearn", "create_model": True},
        ),
        client.post(
            f"{API}/models/fraud/versions",
            json={"artifact_sha256": bad, "framework": "sklearn", "create_model": True},
        ),
        client.post(
            f"{API}/models/fraud/versions",
            json={"artifact_sha256": sha, "framework": bad, "create_model": True},
        ),
        client.get(f"{API}/artifacts/{quote(bad, safe='')}"),
        client.post(f"{API}/artifacts", params={"sha256": bad}, content=b"x"),
        client.get(f"{API}/models/{quote(bad, safe='')}/versions/1/artifact"),
        client.put(f"{API}/models/fraud/aliases/{quote(bad, safe='')}", json={"version": 1}),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
        assert set(r.json()) >= {"error", "code"}, r.text
        assert "/etc/passwd" not in r.text or bad in r.text  # echoed at most, never read
    assert _models(client) == before_models
    assert _files(outside) - _files(home.parent) == before_files


def test_damaged_blob_is_repaired_by_pushing_the_same_bytes(
    stacks: dict[str, TestClient], fraud_skops: Path
) -> None:
    client = stacks["off"]
    data = fraud_skops.read_bytes()
    sha = _upload(client, data)
    status, body = _push(client, "repaired", sha, "sklearn")
    assert status == 201, body
    blob = Path(str(client.app.state.registry.artifacts._blob(sha)))  # type: ignore[attr-defined]
    blob.write_bytes(data[:-10] + b"bit rot!!!")
    r = client.get(f"{API}/models/repaired/versions/1/artifact")
    assert (r.status_code, r.json()["code"]) == (500, "artifact_tampered")
    r = client.get(f"{API}/artifacts/{sha}")
    assert r.json()["code"] == "artifact_tampered"  # so a client uploads the bytes again
    r = client.post(f"{API}/artifacts", params={"sha256": sha}, content=data)
    assert r.status_code == 201, r.text
    r = client.get(f"{API}/models/repaired/versions/1/artifact")
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha


def test_gc_removes_orphans_and_stale_uploads_and_keeps_the_rest(
    stacks: dict[str, TestClient], fraud_skops: Path
) -> None:
    client = stacks["on"]
    registry: LocalRegistry = client.app.state.registry  # type: ignore[attr-defined]
    used = _upload(client, fraud_skops.read_bytes())
    assert _push(client, "kept", used, "sklearn")[0] == 201
    orphan = _upload(client, b"nobody uses me")
    young = _upload(client, b"an upload whose version is on its way")
    staging = Path(registry.artifacts._staging)
    staging.mkdir(parents=True, exist_ok=True)
    stale_part, live_part = staging / "stale.part", staging / "live.part"
    stale_part.write_bytes(b"abandoned")
    live_part.write_bytes(b"in progress")
    old = time.time() - 7200
    for path in (registry.artifacts._blob(used), registry.artifacts._blob(orphan), stale_part):
        os.utime(path, (old, old))

    r = client.post(f"{API}/gc", params={"dry_run": True}, headers=_as(client, "ci:write"))
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    dry = client.post(f"{API}/gc", params={"dry_run": True}).json()
    listed = {(f["kind"], f["name"]) for f in dry["removed"]}
    assert {("artifact", orphan), ("staging", "stale.part")} <= listed
    assert _stored(client, orphan) and stale_part.exists()

    done = client.post(f"{API}/gc").json()
    removed = {(f["kind"], f["name"]) for f in done["removed"]}
    assert removed == listed and not done["dry_run"]
    assert done["bytes_freed"] == sum(f["size"] for f in done["removed"]) > 0
    assert str(staging) not in json.dumps(done)  # names only, never server paths
    assert not _stored(client, orphan) and not stale_part.exists()
    assert _stored(client, used) and _stored(client, young) and live_part.exists()
    r = client.get(f"{API}/models/kept/versions/1/artifact")
    assert r.status_code == 200


def test_the_registry_service_collects_garbage_when_it_starts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", registry={"gc_grace_s": 0})
    with TestClient(create_app(settings, publish_events=False)) as client:
        orphan = _upload(client, b"left behind by a crashed push")
    with TestClient(create_app(settings, publish_events=False)) as client:
        # The first round runs as the service starts, in the background: wait for it.
        assert wait_for(lambda: not _stored(client, orphan), timeout=30)


@pytest.mark.parametrize("framework", ["onnx", "lightgbm", "sklearn"])
def test_an_unreadable_artifact_is_refused_without_naming_server_paths(
    stacks: dict[str, TestClient], framework: str
) -> None:
    client = stacks["off"]
    home = str(client.app.state.registry.artifacts.url)  # type: ignore[attr-defined]
    sha = _upload(client, f"not a {framework} model".encode())
    status, body = _push(client, f"garbage-{framework}", sha, framework)
    assert (status, body["code"]) == (422, "artifact_invalid")
    assert sha in str(body["error"]) and home not in json.dumps(body)
    assert not _stored(client, sha)

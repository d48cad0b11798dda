"""The registry's REST API: every route, every bad input, and the client on top of it."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aimesh.config import Settings
from aimesh.registry.app import create_app

API = "/api/registry"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", registry={"max_artifact_bytes": 200_000})


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, publish_events=False)) as c:
        yield c


def _upload(client: TestClient, data: bytes, sha: str | None = None) -> dict[str, object]:
    params = {"sha256": sha} if sha else {}
    r = client.post(f"{API}/artifacts", content=data, params=params)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def _push(client: TestClient, path: Path, **extra: object) -> dict[str, object]:
    client.post(f"{API}/models", json={"name": "fraud"})
    art = _upload(client, path.read_bytes())
    r = client.post(
        f"{API}/models/fraud/versions",
        json={"artifact_sha256": art["sha256"], "framework": "sklearn", **extra},
    )
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def test_push_fills_signature_and_serves_every_read(client: TestClient, fraud_skops: Path) -> None:
    v = _push(client, fraud_skops, aliases=["champion"], metrics={"auc": 0.91})
    assert v["version"] == 1 and v["aliases"] == ["champion"]
    sig = v["signature"]
    assert isinstance(sig, dict)
    assert sig["inputs"][0]["shape"] == [-1, 30]
    assert client.get(f"{API}/models").json()[0]["aliases"] == {"champion": 1}
    assert client.get(f"{API}/models/fraud/versions/champion").json()["version"] == 1
    assert client.get(f"{API}/models/fraud/versions/latest").json()["version"] == 1
    assert len(client.get(f"{API}/models/fraud/versions").json()) == 1
    r = client.get(f"{API}/models/fraud/versions/1/artifact")
    assert r.status_code == 200 and r.content == fraud_skops.read_bytes()
    assert r.headers["x-aimesh-sha256"] == hashlib.sha256(r.content).hexdigest()


def test_alias_moves_are_recorded_with_the_actor(client: TestClient, fraud_skops: Path) -> None:
    _push(client, fraud_skops)
    _push(client, fraud_skops)
    r = client.put(
        f"{API}/models/fraud/aliases/champion",
        json={"version": 2},
        headers={"X-Aimesh-Actor": "ann"},
    )
    # No key exists: the caller is the local operator; the header only adds detail.
    assert r.status_code == 200 and r.json()["updated_by"] == "operator (ann)"
    history = client.get(f"{API}/models/fraud/history").json()
    assert history[0]["kind"] == "alias" and history[0]["actor"] == "operator (ann)"
    assert client.delete(f"{API}/models/fraud/aliases/champion").status_code == 204
    assert client.get(f"{API}/models/fraud/aliases").json() == []


def test_rollback_moves_the_alias_back_and_says_so(client: TestClient, fraud_skops: Path) -> None:
    _push(client, fraud_skops, aliases=["champion"])
    _push(client, fraud_skops, aliases=["champion"])
    rollback = f"{API}/models/fraud/aliases/champion/rollback"
    moved = client.post(rollback, json={"from_version": 1})
    assert (moved.status_code, moved.json()["code"]) == (409, "alias_moved"), moved.text
    r = client.post(rollback, headers={"X-Aimesh-Actor": "ann"})  # no body: no expectation
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["previous"], r.json()["updated_by"]) == (
        1,
        2,
        "operator (ann)",
    )
    last = client.get(f"{API}/models/fraud/history").json()[0]
    assert (last["kind"], last["action"], last["version"]) == ("alias", "moved", 1)
    assert last["data"] == {"previous": 2, "rollback": True, "from": 2, "to": 1}
    before = client.get(f"{API}/models/fraud/history").json()
    again = client.post(rollback, json={"from_version": 1})
    assert (again.status_code, again.json()["code"]) == (409, "no_previous_version")
    assert client.get(f"{API}/models/fraud/history").json() == before
    assert client.get(f"{API}/models/fraud/versions/champion").json()["version"] == 1


def test_metrics_archive_and_update(client: TestClient, fraud_skops: Path) -> None:
    _push(client, fraud_skops, metrics={"auc": 0.9})
    r = client.post(f"{API}/models/fraud/versions/1/metrics", json={"f1": 0.4})
    assert r.json()["metrics"] == {"auc": 0.9, "f1": 0.4}
    r = client.post(f"{API}/models/fraud/versions/1/metrics", json={"auc": 0.1})
    assert (r.status_code, r.json()["code"]) == (409, "metric_exists")
    assert client.post(f"{API}/models/fraud/versions/1/archive").json()["archived"] is True
    r = client.patch(f"{API}/models/fraud", json={"description": "cards", "tags": {"t": "risk"}})
    assert r.json()["description"] == "cards" and r.json()["tags"] == {"t": "risk"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/models/ghost", None, 404, "model_not_found"),
        ("GET", "/models/fraud/versions/9", None, 404, "version_not_found"),
        ("GET", "/models/fraud/versions/champ", None, 404, "alias_not_found"),
        # Numbers past what storage holds, and digits that are not ASCII (superscript one,
        # Arabic-Indic one): never a 500, never read as another number.
        ("GET", "/models/fraud/versions/%C2%B9", None, 404, "alias_not_found"),
        ("GET", "/models/fraud/versions/%D9%A1", None, 404, "alias_not_found"),
        ("GET", f"/models/fraud/versions/{2**64}", None, 404, "version_not_found"),
        ("GET", "/models/fraud/versions/" + "9" * 5000, None, 404, "version_not_found"),
        ("POST", f"/models/fraud/versions/{2**63}/archive", None, 400, "invalid_request"),
        ("POST", f"/models/fraud/versions/{2**63}/metrics", {"m": 1}, 400, "invalid_request"),
        ("PUT", "/models/fraud/aliases/champion", {"version": 2**63}, 400, "invalid_request"),
        ("PUT", "/models/fraud/aliases/champion", {"version": 9}, 404, "version_not_found"),
        ("PUT", "/models/fraud/aliases/champion", {"version": "x"}, 400, "invalid_request"),
        ("PUT", "/models/fraud/aliases/bad!alias", {"version": 1}, 400, "invalid_name"),
        ("POST", "/models/fraud/aliases/champion/rollback", None, 404, "alias_not_found"),
        ("POST", "/models/ghost/aliases/champion/rollback", None, 404, "model_not_found"),
        ("POST", "/models/fraud/aliases/bad!alias/rollback", None, 400, "invalid_name"),
        (
            "POST",
            "/models/fraud/aliases/champion/rollback",
            {"from_version": 0},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/models/fraud/aliases/champion/rollback",
            {"from_version": "x"},
            400,
            "invalid_request",
        ),
        ("POST", "/models/fraud/aliases/champion/rollback", {"to": 1}, 400, "invalid_request"),
        ("POST", "/models", {"name": "fraud"}, 409, "model_exists"),
        ("POST", "/models", {"name": "../etc"}, 400, "invalid_name"),
        ("POST", "/models", {}, 400, "invalid_request"),
        ("GET", "/models/fraud/history?limit=0", None, 400, "invalid_request"),
        ("GET", "/artifacts/" + "0" * 64, None, 404, "artifact_not_found"),
        ("GET", "/artifacts/nothex", None, 400, "invalid_name"),
        ("GET", "/nowhere", None, 404, "route_not_found"),
        ("DELETE", "/models", None, 405, "method_not_allowed"),
        (
            "POST",
            "/models/fraud/versions",
            {"artifact_sha256": "0" * 64, "framework": "sklearn"},
            404,
            "artifact_not_found",
        ),
        (
            "POST",
            "/models/fraud/versions",
            {"artifact_sha256": "0" * 64, "framework": "sklearn", "aliases": ["9lives"]},
            400,
            "invalid_name",
        ),
    ],
)
def test_bad_requests_get_a_code_and_change_nothing(
    client: TestClient,
    fraud_skops: Path,
    method: str,
    path: str,
    body: object,
    status: int,
    code: str,
) -> None:
    _push(client, fraud_skops)
    before = client.get(f"{API}/models/fraud/history").json()
    r = client.request(method, API + path, json=body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["error"]
    assert client.get(f"{API}/models/fraud/history").json() == before


def test_malformed_json_to_every_endpoint_is_a_400(client: TestClient, fraud_skops: Path) -> None:
    _push(client, fraud_skops)
    routes = [
        ("POST", "/models"),
        ("PATCH", "/models/fraud"),
        ("POST", "/models/fraud/versions"),
        ("POST", "/models/fraud/versions/1/metrics"),
        ("PUT", "/models/fraud/aliases/champion"),
    ]
    for method, path in routes:
        for junk in (b"{not json", b"[1, 2", b"\xff\xfe", b'"a string"', b"null"):
            r = client.request(
                method, API + path, content=junk, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400, (method, path, junk, r.text)
            assert r.json()["code"] == "invalid_request"
    assert len(client.get(f"{API}/models/fraud/versions").json()) == 1


def test_metrics_that_are_not_finite_numbers_are_refused(
    client: TestClient, fraud_skops: Path
) -> None:
    """NaN and Infinity parse as JSON numbers here, and no database column stores them."""
    art = _push(client, fraud_skops)["artifact_sha256"]
    json_ = {"content-type": "application/json"}
    spec = b'{"artifact_sha256": "%s", "framework": "sklearn", "metrics": {"auc": NaN}}'
    r = client.post(f"{API}/models/fraud/versions", content=spec % str(art).encode(), headers=json_)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), r.text
    for junk in (b'{"auc": NaN}', b'{"auc": Infinity}', b'{"auc": -Infinity}'):
        r = client.post(f"{API}/models/fraud/versions/1/metrics", content=junk, headers=json_)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), r.text
    assert len(client.get(f"{API}/models/fraud/versions").json()) == 1
    assert client.get(f"{API}/models/fraud/versions/1").json()["metrics"] == {}


def test_artifact_over_the_limit_is_413_and_not_stored(
    client: TestClient, settings: Settings
) -> None:
    r = client.post(f"{API}/artifacts", content=b"x" * 200_001)
    assert (r.status_code, r.json()["code"]) == (413, "artifact_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(30):
            yield b"y" * 10_000

    r = client.post(f"{API}/artifacts", content=chunks())
    assert (r.status_code, r.json()["code"]) == (413, "artifact_too_large")
    blobs = list((settings.home_dir / "artifacts" / "sha256").rglob("*"))
    assert [b for b in blobs if b.is_file()] == []


def test_corrupted_upload_is_refused(client: TestClient, settings: Settings) -> None:
    declared = hashlib.sha256(b"the real bytes").hexdigest()
    r = client.post(f"{API}/artifacts", content=b"damaged bytes", params={"sha256": declared})
    assert (r.status_code, r.json()["code"]) == (400, "artifact_digest_mismatch")
    assert client.get(f"{API}/artifacts/{declared}").status_code == 404


def test_unsafe_pickle_needs_trust(tmp_path: Path) -> None:
    from sklearn.dummy import DummyClassifier

    settings = Settings(home=tmp_path / "home", registry={"allow_code_artifacts": True})
    with TestClient(create_app(settings, publish_events=False)) as client:
        model = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
        art = _upload(client, pickle.dumps(model))
        client.post(f"{API}/models", json={"name": "fraud"})
        spec = {"artifact_sha256": art["sha256"], "framework": "pickle"}
        r = client.post(f"{API}/models/fraud/versions", json=spec)
        assert (r.status_code, r.json()["code"]) == (422, "unsafe_artifact")
        assert client.get(f"{API}/models/fraud/versions").json() == []
        _upload(client, pickle.dumps(model))  # the refusal removed the unused blob
        r = client.post(f"{API}/models/fraud/versions", json={**spec, "trusted": True})
        assert r.status_code == 201 and r.json()["trusted"] is True
        assert r.json()["version"] == 1  # the refused push used no number


def test_untrusted_skops_type_is_refused(client: TestClient, tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "ft.skops"
    sio.dump(FunctionTransformer(func=hashlib.sha256), path)
    art = _upload(client, path.read_bytes())
    client.post(f"{API}/models", json={"name": "fraud"})
    r = client.post(
        f"{API}/models/fraud/versions",
        json={"artifact_sha256": art["sha256"], "framework": "sklearn"},
    )
    assert (r.status_code, r.json()["code"]) == (422, "untrusted_types")
    assert client.get(f"{API}/models/fraud/versions").json() == []


def test_garbage_artifact_for_a_framework_is_422(client: TestClient) -> None:
    art = _upload(client, b"this is not an onnx graph")
    client.post(f"{API}/models", json={"name": "fraud"})
    r = client.post(
        f"{API}/models/fraud/versions", json={"artifact_sha256": art["sha256"], "framework": "onnx"}
    )
    assert (r.status_code, r.json()["code"]) == (422, "artifact_invalid")
    r = client.post(
        f"{API}/models/fraud/versions",
        json={"artifact_sha256": art["sha256"], "framework": "keras9"},
    )
    assert (r.status_code, r.json()["code"]) == (422, "runtime_unavailable")


def test_tampered_artifact_is_refused_on_download(
    client: TestClient, fraud_skops: Path, settings: Settings
) -> None:
    v = _push(client, fraud_skops)
    sha = str(v["artifact_sha256"])
    (settings.home_dir / "artifacts" / "sha256" / sha[:2] / sha).write_bytes(b"evil")
    r = client.get(f"{API}/models/fraud/versions/1/artifact")
    assert r.json()["code"] == "artifact_tampered"


def test_openapi_document_lists_the_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert f"{API}/models/{{name}}/versions/{{ref}}" in doc["paths"]
    assert client.get("/docs").status_code == 200

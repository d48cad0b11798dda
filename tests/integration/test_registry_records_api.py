"""Record kinds over REST and through the HTTP client: routes made from a kind defined only
in tests, on SQLite and PostgreSQL; bad input is a clear 4xx that changes nothing; the
document is true (an in-process fuzzing run finds no 5xx and nothing undocumented)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from _kinds import GADGET, WIDGET, WidgetSpec, kinds_registered, served
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from _bad_paths import BAD_NAMES
from aimesh.config import Settings
from aimesh.errors import (
    Forbidden,
    InvalidName,
    KindNotFound,
    ModelNotFound,
    RecordConflict,
    RecordExists,
    RecordNotFound,
)
from aimesh.protocol import ERROR_REF
from aimesh.registry import ModelCreate, RecordKind, VersionCreate
from aimesh.registry.app import create_app
from aimesh.registry.client import RegistryClient
from aimesh.rest import statuses_of

KEYS = {"reader": ["read"], "writer": ["write"], "admin": ["admin"]}
SPEC = {"model": "fraud", "version": 1, "weight": 10.0}


def _as(who: str) -> dict[str, str]:
    return {"X-API-Key": f"{who}-key"}


@pytest.fixture(autouse=True)
def _kinds() -> Iterator[None]:
    with kinds_registered():
        yield


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> FastAPI:
    keys = [
        {"name": who, "sha256": hashlib.sha256(f"{who}-key".encode()).hexdigest(), "scopes": s}
        for who, s in KEYS.items()
    ]
    config = Settings(
        home=tmp_path / "home", registry={"database_url": database_url}, auth={"keys": keys}
    )
    return create_app(config, publish_events=False)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers=_as("admin")) as c:
        store = app.state.registry.store
        store.create_model(ModelCreate(name="fraud"), "t")
        spec = VersionCreate(artifact_sha256="a" * 64, framework="sklearn")
        store.create_version("fraud", spec, size=1, signature=None, actor="t")
        yield c


def _state(client: TestClient) -> tuple[Any, ...]:
    """Everything a request could have changed: records, their histories, the outbox."""
    store = client.app.state.registry.store  # type: ignore[attr-defined]
    found: list[Any] = []
    for kind in (WIDGET, GADGET):
        for record in store.list_records(kind, limit=1000):
            found += [record, store.record_history(kind, record.name)]
    return tuple(found), len(store.unpublished_events())


def test_put_get_list_history_delete_with_revisions(client: TestClient) -> None:
    r = client.put("/api/widgets/w1", json=SPEC, headers={"X-Aimesh-Actor": "ann"})
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == '"1"'
    body = r.json()
    assert (body["kind"], body["name"], body["revision"], body["spec"]) == (
        "widget",
        "w1",
        1,
        {**SPEC, "labels": {}},
    )
    assert body["created_by"] == "admin (ann)"
    got = client.get("/api/widgets/w1")
    assert got.status_code == 200 and got.json() == body and got.headers["etag"] == '"1"'
    heavier = {**SPEC, "weight": 50.0}
    r = client.put("/api/widgets/w1", json=heavier, headers={"If-Match": '"1"'})
    assert (r.status_code, r.json()["revision"], r.headers["etag"]) == (200, 2, '"2"')
    stale = client.put("/api/widgets/w1", json=SPEC, headers={"If-Match": '"1"'})
    assert (stale.status_code, stale.json()["code"]) == (409, "record_conflict")
    assert stale.json()["details"]["revision"] == 2
    again = client.put("/api/widgets/w1", json=SPEC, headers={"If-None-Match": "*"})
    assert (again.status_code, again.json()["code"]) == (409, "record_exists")
    r = client.put("/api/widgets/w1", json=SPEC, headers={"If-Match": "*"})
    assert r.json()["revision"] == 3
    client.put("/api/widgets/w0", json=SPEC, headers={"If-None-Match": "*"})
    names = [x["name"] for x in client.get("/api/widgets").json()]
    assert names == ["w0", "w1"]
    assert [x["name"] for x in client.get("/api/widgets?limit=1&after=w0").json()] == ["w1"]
    history = client.get("/api/widgets/w1/history").json()
    assert [(h["revision"], h["action"]) for h in history] == [
        (3, "updated"),
        (2, "updated"),
        (1, "created"),
    ]
    assert history[1]["spec"]["weight"] == 50.0
    assert client.delete("/api/widgets/w1", headers={"If-Match": '"2"'}).status_code == 409
    assert client.delete("/api/widgets/w1", headers={"If-Match": '"3"'}).status_code == 204
    gone = client.get("/api/widgets/w1")
    assert (gone.status_code, gone.json()["code"]) == (404, "record_not_found")
    assert client.delete("/api/widgets/w1").status_code == 404
    deleted = client.get("/api/widgets/w1/history?limit=1").json()
    assert [(h["revision"], h["action"], h["spec"]) for h in deleted] == [(4, "deleted", None)]
    recreated = client.put("/api/widgets/w1", json=SPEC)
    assert (recreated.status_code, recreated.json()["revision"]) == (201, 5)
    events = client.app.state.registry.store.unpublished_events()  # type: ignore[attr-defined]
    mine = [(e.kind, e.action, e.data["revision"]) for _, e in events if e.model == "w1"]
    assert mine[-3:] == [
        ("widget", "updated", 3),
        ("widget", "deleted", 4),
        ("widget", "created", 5),
    ]


BAD_REQUESTS: list[tuple[str, str, dict[str, str], Any, int, str]] = [
    # bad specs
    ("PUT", "/api/widgets/w2", {}, {"weight": 1.0}, 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, {**SPEC, "extra": 1}, 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, {**SPEC, "weight": -1}, 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, {**SPEC, "weight": "heavy"}, 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, [SPEC], 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, b'{"model": "fraud", "weight": NaN}', 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, b"{not json", 400, "invalid_request"),
    ("PUT", "/api/widgets/w2", {}, None, 400, "invalid_request"),
    # what the kind's validate hook refuses
    ("PUT", "/api/widgets/w2", {}, {"model": "ghost"}, 404, "model_not_found"),
    ("PUT", "/api/widgets/w2", {}, {**SPEC, "version": 9}, 404, "version_not_found"),
    ("PUT", "/api/widgets/w1", {}, {"model": "fraud2"}, 404, "model_not_found"),
    # revisions and conditions
    ("PUT", "/api/widgets/w1", {"If-Match": '"2"'}, SPEC, 409, "record_conflict"),
    ("PUT", "/api/widgets/w2", {"If-Match": '"1"'}, SPEC, 404, "record_not_found"),
    ("PUT", "/api/widgets/w2", {"If-Match": "*"}, SPEC, 404, "record_not_found"),
    ("PUT", "/api/widgets/w1", {"If-None-Match": "*"}, SPEC, 409, "record_exists"),
    ("PUT", "/api/widgets/w1", {"If-Match": "one"}, SPEC, 400, "invalid_request"),
    ("PUT", "/api/widgets/w1", {"If-Match": '"0"'}, SPEC, 400, "invalid_request"),
    ("PUT", "/api/widgets/w1", {"If-Match": "9" * 30}, SPEC, 400, "invalid_request"),
    ("PUT", "/api/widgets/w1", {"If-None-Match": '"1"'}, SPEC, 400, "invalid_request"),
    (
        "PUT",
        "/api/widgets/w1",
        {"If-Match": "*", "If-None-Match": "*"},
        SPEC,
        400,
        "invalid_request",
    ),
    ("DELETE", "/api/widgets/w1", {"If-Match": '"7"'}, None, 409, "record_conflict"),
    ("DELETE", "/api/widgets/w1", {"If-Match": "x"}, None, 400, "invalid_request"),
    ("DELETE", "/api/widgets/w2", {}, None, 404, "record_not_found"),
    # bounds, names, kinds
    ("GET", "/api/widgets?limit=0", {}, None, 400, "invalid_request"),
    ("GET", "/api/widgets?limit=1001", {}, None, 400, "invalid_request"),
    ("GET", "/api/widgets?after=a.b", {}, None, 400, "invalid_name"),
    ("GET", "/api/widgets/w2/history", {}, None, 404, "record_not_found"),
    ("PUT", "/api/gadgets/Upper", {}, SPEC, 400, "invalid_name"),
    ("PUT", "/api/widgets/" + "x" * 129, {}, SPEC, 400, "invalid_name"),
    ("PUT", "/api/widgets/a.b", {}, SPEC, 400, "invalid_name"),
    ("GET", "/api/nopes", {}, None, 404, "route_not_found"),
    ("PUT", "/api/nopes/w1", {}, SPEC, 404, "route_not_found"),
    ("POST", "/api/widgets/w1", {}, SPEC, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code"),
    BAD_REQUESTS,
    ids=[f"{m} {p} {h} {str(b)[:30]}" for m, p, h, b, *_ in BAD_REQUESTS],
)
def test_bad_requests_get_a_clear_4xx_and_change_nothing(
    client: TestClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: str,
) -> None:
    assert client.put("/api/widgets/w1", json=SPEC).status_code == 201
    before = _state(client)
    if isinstance(body, bytes):
        headers = {**headers, "content-type": "application/json"}
        r = client.request(method, path, content=body, headers=headers)
    else:
        r = client.request(method, path, json=body, headers=headers)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["error"]
    assert _state(client) == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_reach_outside_are_refused_on_every_route(client: TestClient, name: str) -> None:
    before = _state(client)
    escaped = quote(name, safe="")
    for method, path, body in [
        ("PUT", f"/api/widgets/{escaped}", SPEC),
        ("GET", f"/api/widgets/{escaped}", None),
        ("DELETE", f"/api/widgets/{escaped}", None),
        ("GET", f"/api/widgets/{escaped}/history", None),
        ("GET", f"/api/widgets?after={escaped}", None),
    ]:
        r = client.request(method, path, json=body)
        assert r.status_code in (400, 404), (method, path, r.text)
        assert r.json()["code"] in ("invalid_name", "route_not_found"), (method, path, r.text)
    assert _state(client) == before


def test_writes_need_the_kinds_scope_and_reads_need_read(app: FastAPI) -> None:
    with TestClient(app) as c:
        c.app.state.registry.store.create_model(ModelCreate(name="fraud"), "t")  # type: ignore[attr-defined]
        spec = {"model": "fraud"}
        assert c.put("/api/widgets/w1", json=spec).status_code == 401
        assert c.put("/api/widgets/w1", json=spec, headers=_as("reader")).status_code == 403
        assert c.put("/api/widgets/w1", json=spec, headers=_as("writer")).status_code == 201
        assert c.get("/api/widgets/w1", headers=_as("reader")).status_code == 200
        assert c.get("/api/widgets").status_code == 401
        # The gadget kind needs the admin scope to write; reading stays read.
        refused = c.put("/api/gadgets/g", json=spec, headers=_as("writer"))
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
        assert c.put("/api/gadgets/g", json=spec, headers=_as("admin")).status_code == 201
        assert c.delete("/api/gadgets/g", headers=_as("writer")).status_code == 403
        assert c.get("/api/gadgets/g/history", headers=_as("reader")).status_code == 200


def test_the_document_has_each_kinds_routes_schema_scopes_and_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemathesis.openapi.from_dict(document).validate()
    paths = document["paths"]
    for plural in ("widgets", "gadgets"):
        assert {f"/api/{plural}", f"/api/{plural}/{{name}}", f"/api/{plural}/{{name}}/history"} <= (
            set(paths)
        )
    put = paths["/api/widgets/{name}"]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WidgetSpec"}
    assert document["components"]["schemas"]["WidgetSpec"]["additionalProperties"] is False
    ok = put["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/WidgetRecord"}
    assert put["responses"]["409"]["content"]["application/json"]["schema"] == ERROR_REF
    assert put["x-aimesh-scope"] == "write"
    assert paths["/api/gadgets/{name}"]["put"]["x-aimesh-scope"] == "admin"
    name = next(p for p in put["parameters"] if p["name"] == "name")
    assert name["schema"]["pattern"] == WIDGET.name_pattern.pattern
    gadget = paths["/api/gadgets/{name}"]["get"]["parameters"][0]
    assert gadget["schema"]["pattern"] == GADGET.name_pattern.pattern
    headers = {p["name"] for p in put["parameters"] if p["in"] == "header"}
    assert {"If-Match", "If-None-Match"} <= headers
    listing = paths["/api/widgets"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listing["schema"]["type"] == "array"
    for path, item in paths.items():
        if path.startswith(("/api/widgets", "/api/gadgets")):
            for method, operation in item.items():
                missing = {str(s) for s in statuses_of(path, method, operation)}
                assert missing <= set(operation["responses"]), (method, path)


def test_fuzzing_the_kinds_routes_finds_no_server_error_and_nothing_undocumented(
    app: FastAPI,
) -> None:
    with served(app) as url:
        registry = app.state.registry
        registry.store.create_model(ModelCreate(name="fraud"), "t")
        registry.put_record(WIDGET, "w1", WidgetSpec(model="fraud"))
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json").include(
            path_regex=r"^/api/(widgets|gadgets)"
        )
        cases = st.one_of(
            schema.as_strategy(GenerationMode.POSITIVE),
            schema.as_strategy(GenerationMode.NEGATIVE),
        )
        checks = [
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]

        @given(case=cases)
        @settings(
            max_examples=300,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=_as("admin"), checks=checks)

        fuzz()


# -- the HTTP client, against a registry served for real ----------------------------------------


def test_the_client_offers_the_same_operations_with_the_same_errors(app: FastAPI) -> None:
    with served(app) as url, contextlib.closing(_client(url, "admin")) as reg:
        app.state.registry.store.create_model(ModelCreate(name="fraud"), "t")
        spec = WidgetSpec(model="fraud", weight=3.0)
        made = reg.create_record(WIDGET, "w1", spec)
        assert (made.revision, made.spec, made.kind) == (1, spec, "widget")
        assert isinstance(made.spec, WidgetSpec)
        with pytest.raises(RecordExists):
            reg.create_record(WIDGET, "w1", spec)
        heavier = spec.model_copy(update={"weight": 7.0})
        assert reg.replace_record(WIDGET, "w1", heavier, revision=1).revision == 2
        with pytest.raises(RecordConflict) as conflict:
            reg.replace_record(WIDGET, "w1", spec, revision=1)
        assert conflict.value.code == "record_conflict"
        assert reg.replace_record(WIDGET, "w1", spec).revision == 3
        assert reg.put_record(WIDGET, "w2", spec).revision == 1
        assert reg.get_record(WIDGET, "w1").spec == spec
        assert [r.name for r in reg.list_records(WIDGET)] == ["w1", "w2"]
        assert [r.name for r in reg.list_records(WIDGET, limit=1, after="w1")] == ["w2"]
        history = reg.record_history(WIDGET, "w1", limit=2)
        assert [(h.revision, h.action) for h in history] == [(3, "updated"), (2, "updated")]
        assert history[1].spec == heavier
        with pytest.raises(RecordConflict):
            reg.delete_record(WIDGET, "w1", revision=2)
        reg.delete_record(WIDGET, "w1", revision=3)
        with pytest.raises(RecordNotFound):
            reg.get_record(WIDGET, "w1")
        with pytest.raises(ModelNotFound):
            reg.put_record(WIDGET, "w3", WidgetSpec(model="ghost"))
        for bad in ["../x", "a.b", "x\n"]:
            with pytest.raises(InvalidName):
                reg.get_record(WIDGET, bad)
        stranger = RecordKind(name="stranger", plural="strangers", spec=WidgetSpec)
        with pytest.raises(KindNotFound):
            reg.list_records(stranger)
        with contextlib.closing(_client(url, "writer")) as writer, pytest.raises(Forbidden):
            writer.put_record(GADGET, "g", spec)
        assert [r.name for r in reg.list_records(WIDGET)] == ["w2"]
        assert reg.list_records(GADGET) == []


def _client(url: str, who: str) -> RegistryClient:
    return RegistryClient(url, timeout=30, cache_dir=Path("/nonexistent"), api_key=f"{who}-key")


def test_a_registry_with_a_kind_announces_its_api(app: FastAPI) -> None:
    """What the gateway routes by: the registry's discovery entry names each kind's plural."""
    from aimesh.bus import describe_service

    entry = describe_service("registry", "registry", rest_url="http://x:1", apis=["widgets"])()
    assert entry.apis == ("widgets",)
    with served(app) as url:
        assert httpx.get(f"{url}/api/widgets", headers=_as("reader")).status_code == 200


def test_a_long_actor_detail_is_cut_to_what_is_stored_on_every_backend(client: TestClient) -> None:
    r = client.put("/api/widgets/w1", json=SPEC, headers={"X-Aimesh-Actor": "a" * 256})
    assert r.status_code == 201, r.text
    assert r.json()["created_by"].startswith("admin (aaa") and len(r.json()["created_by"]) == 256
    r = client.put(
        "/api/registry/models/fraud/aliases/champion",
        json={"version": 1},
        headers={"X-Aimesh-Actor": "b" * 256},
    )
    assert (r.status_code, len(r.json()["updated_by"])) == (200, 256), r.text

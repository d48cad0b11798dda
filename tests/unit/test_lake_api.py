"""The lake's REST API through FastAPI's test client: every route, every bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from _bad_paths import BAD_NAMES
from aimesh.config import Settings
from aimesh.lake import Lake
from aimesh.lake.app import create_app

CSV = b"id,label,amount\n1,ok,1.5\n2,fraud,2.5\n3,ok,\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", lake={"max_query_rows": 50, "max_upload_bytes": 4096})


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def tx(client: TestClient) -> None:
    """Dataset ``tx``: version 0 with 3 rows, version 1 with 6."""
    for _ in range(2):
        got = client.post("/api/lake/datasets/tx/ingest?format=csv", content=CSV)
        assert got.status_code == 201, got.text


def test_ingest_by_upload_creates_then_appends(client: TestClient) -> None:
    first = client.post("/api/lake/datasets/tx/ingest", params={"format": "csv"}, content=CSV)
    jsonl = b'{"id": 4, "label": "ok", "amount": 1}\n'
    second = client.post("/api/lake/datasets/tx/ingest?format=jsonl", content=jsonl)

    assert first.status_code == 201
    assert (first.json()["version"], first.json()["rows"], first.json()["created"]) == (0, 3, True)
    assert (second.json()["version"], second.json()["rows"]) == (1, 1)


@pytest.mark.usefixtures("tx")
def test_list_describe_schema_and_versions(client: TestClient) -> None:
    listed = client.get("/api/lake/datasets").json()
    info = client.get("/api/lake/datasets/tx").json()
    old = client.get("/api/lake/datasets/tx", params={"version": 0}).json()
    schema = client.get("/api/lake/datasets/tx/schema").json()
    versions = client.get("/api/lake/datasets/tx/versions").json()

    assert [(d["name"], d["version"], d["rows"]) for d in listed] == [("tx", 1, 6)]
    assert (info["version"], info["rows"], info["latest_version"]) == (1, 6, 1)
    assert (old["version"], old["rows"]) == (0, 3)
    assert [c["name"] for c in schema] == ["id", "label", "amount"]
    assert [c["type"] for c in schema] == ["int64", "string", "double"]
    assert [v["version"] for v in versions] == [1, 0]


@pytest.mark.usefixtures("tx")
def test_query_returns_columns_rows_and_truncation(client: TestClient) -> None:
    got = client.post(
        "/api/lake/query",
        json={"sql": "select id, amount from tx order by id, amount nulls last", "limit": 4},
    )
    old = client.post("/api/lake/query", json={"sql": "select count(*) n from tx", "version": 0})

    body = got.json()
    assert got.status_code == 200
    assert [c["name"] for c in body["columns"]] == ["id", "amount"]
    assert body["rows"] == [[1, 1.5], [1, 1.5], [2, 2.5], [2, 2.5]]
    assert (body["truncated"], body["row_count"], body["versions"]) == (True, 4, {"tx": 1})
    assert old.json()["rows"] == [[3]]


def test_values_json_has_no_type_for_travel_as_text(client: TestClient) -> None:
    sql = (
        "select 'nan'::double as nan, timestamp '2024-01-02 03:04:05' as ts, 1.5::decimal(4,2) d, "
        "'\\x00\\xff'::blob as b, [1, 2] as l, {'k': 1} as s, interval 1 day as i"
    )
    got = client.post("/api/lake/query", json={"sql": sql})

    assert got.status_code == 200, got.text
    (row,) = got.json()["rows"]
    assert row[0] is None
    assert row[1].startswith("2024-01-02T03:04:05")
    assert row[2] == "1.50"
    assert row[4:6] == [[1, 2], {"k": 1}]


@pytest.mark.usefixtures("tx")
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"sql": "drop table tx"}, 400, "query_refused"),
        ({"sql": "copy tx to '/tmp/aimesh-api-leak.csv'"}, 400, "query_refused"),
        ({"sql": "select * from read_csv('/etc/passwd')"}, 400, "query_refused"),
        ({"sql": "select 1; select 2"}, 400, "query_refused"),
        ({"sql": "selec 1"}, 400, "invalid_query"),
        ({"sql": "select * from nope"}, 404, "dataset_not_found"),
        ({"sql": "select * from tx", "version": 9}, 404, "dataset_version_not_found"),
        ({"sql": "select * from tx", "limit": 51}, 400, "invalid_request"),
        ({"sql": "select * from tx", "limit": 0}, 400, "invalid_request"),
        ({"sql": ""}, 400, "invalid_request"),
        ({"query": "select 1"}, 400, "invalid_request"),
    ],
)
def test_bad_queries_get_clear_errors_never_a_500(
    client: TestClient, body: dict[str, object], status: int, code: str
) -> None:
    got = client.post("/api/lake/query", json=body)

    assert (got.status_code, got.json()["code"]) == (status, code), got.text
    assert got.json()["error"]


def test_malformed_json_is_a_400(client: TestClient) -> None:
    got = client.post(
        "/api/lake/query",
        content=b'{"sql": "select 1",',
        headers={"content-type": "application/json"},
    )
    assert (got.status_code, got.json()["code"]) == (400, "invalid_request")


@pytest.mark.usefixtures("tx")
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", "/api/lake/datasets/nope", {}, 404, "dataset_not_found"),
        ("get", "/api/lake/datasets/Nope", {}, 400, "invalid_name"),
        ("get", "/api/lake/datasets/tx?version=7", {}, 404, "dataset_version_not_found"),
        ("get", "/api/lake/datasets/tx?version=-1", {}, 400, "invalid_request"),
        ("get", "/api/lake/datasets/tx?version=x", {}, 400, "invalid_request"),
        ("get", "/api/lake/datasets/nope/versions", {}, 404, "dataset_not_found"),
        (
            "post",
            "/api/lake/datasets/tx/ingest?format=xml",
            {"content": CSV},
            400,
            "invalid_request",
        ),
        ("post", "/api/lake/datasets/tx/ingest", {"content": CSV}, 400, "invalid_request"),
        (
            "post",
            "/api/lake/datasets/tx/ingest?format=csv",
            {"content": b""},
            400,
            "invalid_request",
        ),
        (
            "post",
            "/api/lake/datasets/tx/ingest?format=csv",
            {"content": b"id,label,amount\nx,ok,1\n"},
            422,
            "schema_mismatch",
        ),
        (
            "post",
            "/api/lake/datasets/tx/ingest?format=parquet",
            {"content": b"not parquet"},
            422,
            "invalid_data",
        ),
        (
            "post",
            "/api/lake/datasets/tx/ingest?format=csv",
            {"content": CSV * 200},
            413,
            "request_too_large",
        ),
        (
            "post",
            "/api/lake/datasets/bad-name/ingest?format=csv",
            {"content": CSV},
            400,
            "invalid_name",
        ),
    ],
)
def test_bad_requests_get_clear_errors_and_change_nothing(
    client: TestClient,
    method: str,
    path: str,
    kwargs: dict[str, bytes],
    status: int,
    code: str,
) -> None:
    got = client.request(method.upper(), path, **kwargs)  # type: ignore[arg-type]

    assert (got.status_code, got.json()["code"]) == (status, code), got.text
    assert client.get("/api/lake/datasets/tx").json()["version"] == 1


def test_an_upload_streamed_without_a_length_is_still_limited(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    got = client.post("/api/lake/datasets/tx/ingest?format=csv", content=chunks())
    assert (got.status_code, got.json()["code"]) == (413, "request_too_large")


def test_the_app_serves_a_given_lake_and_openapi(settings: Settings, tmp_path: Path) -> None:
    lake = Lake.from_settings(settings)
    lake.write("given", pa.table({"x": [1]}))
    with TestClient(create_app(settings, lake=lake)) as client:
        assert [d["name"] for d in client.get("/api/lake/datasets").json()] == ["given"]
        paths = client.get("/openapi.json").json()["paths"]
        assert "/api/lake/query" in paths
        assert client.get("/health").json() == {"status": "ok", "checks": {"store": "ok"}}
        assert client.get("/health/live").json() == {"status": "ok"}
    assert json.loads(lake.describe("given").model_dump_json())["rows"] == 1


def test_a_query_past_the_memory_limit_is_a_clear_error_and_the_service_keeps_serving(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", lake={"query_memory_limit": "20MB"})
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/lake/datasets/tx/ingest?format=csv", content=CSV).is_success

        needy = "select list(range) from range(20000000)"  # a list cannot spill to disk
        big = client.post("/api/lake/query", json={"sql": needy})
        small = client.post("/api/lake/query", json={"sql": "select count(*) as n from tx"})

    assert (big.status_code, big.json()["code"]) == (422, "query_too_large"), big.text
    assert "20MB" in big.json()["error"]
    assert str(tmp_path) not in big.text
    assert small.status_code == 200, small.text
    assert small.json()["rows"] == [[3]]
    assert list((tmp_path / "home" / "lake-tmp").iterdir()) == []


def test_a_query_beyond_the_concurrency_limit_is_refused_with_retry_after(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path / "home", lake={"max_concurrent_queries": 1, "query_wait_s": 0}
    )
    lake = Lake.from_settings(settings)
    with TestClient(create_app(settings, lake=lake)) as client:
        with lake.engine.stream("select 1", batch_rows=10):  # holds the only slot
            busy = client.post("/api/lake/query", json={"sql": "select 1 as one"})
        after = client.post("/api/lake/query", json={"sql": "select 1 as one"})

    assert (busy.status_code, busy.json()["code"]) == (503, "query_busy"), busy.text
    assert busy.headers["retry-after"] == "1"
    assert after.status_code == 200, after.text


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("tx")
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_dataset_names_that_look_like_paths_are_refused_and_touch_nothing(
    client: TestClient, settings: Settings, tmp_path: Path, bad: str
) -> None:
    name = quote(bad, safe="")
    before = _files(tmp_path)
    answers = [
        client.get(f"/api/lake/datasets/{name}"),
        client.get(f"/api/lake/datasets/{name}/schema"),
        client.get(f"/api/lake/datasets/{name}/versions"),
        client.post(f"/api/lake/datasets/{name}/ingest?format=csv", content=CSV),
        client.post(f"/api/lake/datasets/{name}/compact"),
        client.post(f"/api/lake/datasets/{name}/vacuum", params={"dry_run": False}),
        client.post("/api/lake/query", json={"sql": "select 1 from tx", "versions": {bad: 0}}),
        client.post("/api/lake/query", json={"sql": f'select * from "{bad}"'}),
        client.post("/api/lake/query", json={"sql": f"select * from '{bad}'"}),
    ]
    for got in answers:
        assert 400 <= got.status_code < 500, (got.request.url, got.status_code, got.text)
        assert set(got.json()) >= {"error", "code"}, got.text
        assert "root:" not in got.text  # /etc/passwd was never read
    assert _files(tmp_path) == before
    listed = client.get("/api/lake/datasets").json()
    assert [d["name"] for d in listed] == ["tx"]

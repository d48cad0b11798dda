"""Error bodies never carry the server's paths, internal URLs, driver text or stack traces.

Each case provokes a real failure (a vacuumed lake version, a registry database that is
gone, a registry that is down behind the gateway, uploads that cannot be read) and checks
the body: no path under the test's folder, no driver text, the request id, which the
service log shows with the detail the body leaves out.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aimesh.config import Settings
from aimesh.errors import BusUnavailable, InvalidRequest, StoreUnavailable, foreign_message
from aimesh.gateway.catalog import RegistryCatalog
from aimesh.lake.app import create_app as lake_app
from aimesh.protocol.grpc import grpc_details
from aimesh.registry.app import create_app as registry_app
from aimesh.rest import install_error_handlers

CSV = b"id,label\n1,ok\n2,fraud\n"
LEAKS = ("sqlite", "psycopg", "Traceback", "OperationalError", "duckdb")


def _assert_clean(response: httpx.Response, tmp_path: Path) -> str:
    """The body has no server path and no driver text; return its request id."""
    text = response.text
    for leak in (str(tmp_path), tempfile.gettempdir() + "/", *LEAKS):
        assert leak not in text, f"{leak!r} leaked: {text}"
    request_id: str = response.json()["request_id"]
    assert request_id and response.headers["x-request-id"] == request_id
    return request_id


def _logged(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """Every log line (with its stack) that names ``request_id``."""
    lines = []
    for record in caplog.records:
        text = record.getMessage()
        if request_id in text:
            stack = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
            lines.append(f"{text}\n{stack}")
    assert lines, f"request {request_id} is not in the log"
    return "\n".join(lines)


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def test_an_unexpected_failure_says_internal_error_and_only_the_request_id(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"cannot open {tmp_path}/secret.db")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"x-request-id": "req-42"})

    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal error; the service log has it under request id req-42",
        "code": "internal_error",
        "request_id": "req-42",
    }
    assert "secret.db" in _logged(caplog_all, "req-42")


def test_a_wild_request_id_is_replaced_and_every_answer_carries_one() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"ok": "yes"}

    with TestClient(app) as client:
        fine = client.get("/ok")
        wild = client.get("/nope", headers={"x-request-id": "a <b>" * 50})

    assert len(fine.headers["x-request-id"]) == 32
    assert wild.status_code == 404
    assert wild.json()["request_id"] == wild.headers["x-request-id"] != "a <b>" * 50


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(lake_app(Settings(home=tmp_path / "home"))) as client:
        yield client


def test_a_vacuumed_lake_version_names_the_dataset_not_its_files(
    lake: TestClient, tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        assert lake.post("/api/lake/datasets/tx/ingest?format=csv", content=CSV).is_success
    assert lake.post("/api/lake/datasets/tx/compact").is_success
    vacuum = lake.post(
        "/api/lake/datasets/tx/vacuum",
        params={"retain_hours": 0, "force": True, "dry_run": False},
    )
    assert vacuum.is_success, vacuum.text

    gone = lake.post("/api/lake/query", json={"sql": "select * from tx", "version": 1})

    assert (gone.status_code, gone.json()["code"]) == (410, "dataset_version_gone"), gone.text
    assert "'tx' version 1" in gone.json()["error"]
    assert gone.json()["details"]["missing"].endswith(".parquet")
    request_id = _assert_clean(gone, tmp_path)
    assert str(tmp_path) in _logged(caplog_all, request_id)


def test_an_upload_that_cannot_be_read_does_not_name_its_temp_file(
    lake: TestClient, tmp_path: Path
) -> None:
    bad = lake.post("/api/lake/datasets/tx/ingest?format=parquet", content=b"not parquet" * 10)

    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_data"), bad.text
    _assert_clean(bad, tmp_path)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[TestClient, FastAPI]]:
    app = registry_app(Settings(home=tmp_path / "home"), publish_events=False)
    with TestClient(app) as client:
        yield client, app


def test_a_registry_database_that_is_gone_is_a_503_without_driver_text(
    registry: tuple[TestClient, FastAPI], tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    client, app = registry
    assert client.post("/api/registry/models", json={"name": "m"}).status_code == 201
    database = tmp_path / "home" / "registry.db"
    database.unlink()
    database.mkdir()  # what was the database file cannot be opened as one any more
    app.state.registry.store.engine.dispose()

    gone = client.get("/api/registry/models")

    assert (gone.status_code, gone.json()["code"]) == (503, "store_unavailable"), gone.text
    request_id = _assert_clean(gone, tmp_path)
    assert "unable to open database file" in _logged(caplog_all, request_id)


def test_an_artifact_that_cannot_be_read_does_not_name_the_stored_file(
    registry: tuple[TestClient, FastAPI], tmp_path: Path
) -> None:
    client, _app = registry
    assert client.post("/api/registry/models", json={"name": "m"}).status_code == 201
    uploaded = client.post("/api/registry/artifacts", content=b"not an onnx model")
    assert uploaded.is_success, uploaded.text

    refused = client.post(
        "/api/registry/models/m/versions",
        json={"artifact_sha256": uploaded.json()["sha256"], "framework": "onnx"},
    )

    assert (refused.status_code, refused.json()["code"]) == (422, "artifact_invalid"), refused.text
    _assert_clean(refused, tmp_path)


def test_the_gateway_does_not_tell_where_the_registry_it_cannot_reach_is(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", registry={"url": "http://127.0.0.1:9/inner"})
    catalog = RegistryCatalog(settings)
    try:
        with pytest.raises(StoreUnavailable) as refused:
            asyncio.run(catalog.lookup("fraud", None))
    finally:
        catalog.close()

    assert "127.0.0.1" not in refused.value.message
    assert "inner" not in refused.value.message
    assert "127.0.0.1:9" in str(refused.value.__cause__)  # kept for the log


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('IO Error: No files found that match "/srv/lake/tx/a.parquet"', 'match "<hidden>"'),
        ("cannot reach http://10.0.0.5:8100/api: refused", "cannot reach <hidden>: refused"),
        ('Parser Error: syntax error at or near "/"\nLINE 1: ...', 'near "/"'),
        ("select 1/2 fails", "select 1/2 fails"),
    ],
)
def test_foreign_messages_keep_their_words_but_not_paths_or_urls(text: str, shown: str) -> None:
    assert shown in foreign_message(ValueError(text))
    assert "\n" not in foreign_message(ValueError(text))


def test_a_server_error_body_does_not_say_where_the_servers_parts_live(
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/submit")
    def submit() -> None:
        raise BusUnavailable("job j1 was not queued on the bus at nats://10.1.2.3:4222: gone")

    @app.get("/bad")
    def bad() -> None:
        raise InvalidRequest("webhook http://example.com/hook is refused")

    with TestClient(app) as client:
        down = client.get("/submit")
        refused = client.get("/bad")

    assert (down.status_code, down.json()["code"]) == (503, "bus_unavailable")
    assert down.json()["error"] == "job j1 was not queued on the bus at <hidden>: gone"
    assert "nats://10.1.2.3:4222" in _logged(caplog_all, down.json()["request_id"])
    assert "http://example.com/hook" in refused.json()["error"]  # the caller's own words


def test_grpc_details_carry_the_request_id_and_hide_a_server_errors_addresses() -> None:
    unavailable = BusUnavailable("no bus at nats://10.1.2.3:4222")
    invalid = InvalidRequest("cannot parse /v2/models/x")

    assert grpc_details(unavailable, "r1") == "no bus at <hidden> (bus_unavailable; request_id r1)"
    assert (
        grpc_details(invalid, "r2") == "cannot parse /v2/models/x (invalid_request; request_id r2)"
    )

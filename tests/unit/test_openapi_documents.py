"""Every service's OpenAPI document is true to the service: loaded as each service builds it.

Each validates as OpenAPI 3.1 (schemathesis' meta-schema check), documents on every
operation the errors the one rule names (:func:`aimesh.rest.statuses_of`) with the one error
body, defines every path parameter, and says what is returned: lists as arrays, the SSE
stream as ``text/event-stream``. The gateway's merged document covers every service.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import schemathesis

from aimesh.config import LakeSettings, Settings
from aimesh.gateway.openapi import MergedOpenApi, gateway_document
from aimesh.jobs.app import create_app as jobs_app
from aimesh.lake.app import create_app as lake_app
from aimesh.protocol import ERROR_REF, ERROR_SCHEMA, MODEL_NAME
from aimesh.registry.app import create_app as registry_app
from aimesh.rest import OPERATION_METHODS, SCOPE_KEY, statuses_of
from aimesh.serving.openapi import OPENAPI_DOCUMENT

SERVICES = ("registry", "lake", "jobs")
DOCUMENTS = (*SERVICES, "model", "gateway")
_MAKERS = {"registry": registry_app, "lake": lake_app, "jobs": jobs_app}


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    settings = Settings(home=tmp_path_factory.mktemp("documents") / "home")
    found = {name: _MAKERS[name](settings).openapi() for name in SERVICES}
    found["model"] = json.loads(OPENAPI_DOCUMENT)
    merged = MergedOpenApi(gateway_document(auth=True), auth=True)

    async def fetch(name: str) -> bytes:
        return json.dumps(found[name]).encode()

    rendered = asyncio.run(merged.render({name: f"{name}-1" for name in SERVICES}, fetch))
    found["gateway"] = json.loads(rendered)
    return found


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], list[Any]]]:
    """(path, method, operation, the path item's parameters) of every operation."""
    return [
        (path, method, operation, item.get("parameters", []))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in OPERATION_METHODS
    ]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_each_document_validates_as_openapi_3_1(
    documents: dict[str, dict[str, Any]], name: str
) -> None:
    document = documents[name]
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_operation_documents_its_errors_with_the_error_body(
    documents: dict[str, dict[str, Any]], name: str
) -> None:
    document = documents[name]
    assert document["components"]["schemas"]["Error"] == ERROR_SCHEMA
    assert "HTTPValidationError" not in json.dumps(document)  # the services answer 400
    for path, method, operation, _ in _operations(document):
        responses = operation["responses"]
        missing = {str(s) for s in statuses_of(path, method, operation)} - set(responses)
        assert not missing, f"{method.upper()} {path} leaves out {sorted(missing)}"
        assert any(s.startswith("2") for s in responses), f"{method.upper()} {path}"
        for status, response in responses.items():
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            readiness = status == "503" and path.endswith(("/ready", "/live", "/health"))
            if int(status) >= 400 and not readiness:
                assert schema == ERROR_REF, f"{method.upper()} {path} {status}"


@pytest.mark.parametrize("name", SERVICES)
def test_every_operation_a_full_service_refuses_documents_503_with_retry_after(
    documents: dict[str, dict[str, Any]], name: str
) -> None:
    """Past ``max_concurrency`` every route but the open ones (health, docs) is refused."""
    for path, method, operation, _ in _operations(documents[name]):
        if operation.get(SCOPE_KEY) == "open":
            assert path in ("/health", "/health/live"), path  # never refused (rest.inflight)
            continue
        refused = operation["responses"]["503"]
        assert "Retry-After" in refused.get("headers", {}), f"{method.upper()} {path}"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_path_parameter_is_defined(documents: dict[str, dict[str, Any]], name: str) -> None:
    for path, method, operation, shared in _operations(documents[name]):
        defined = {
            p["name"] for p in [*shared, *operation.get("parameters", [])] if p["in"] == "path"
        }
        named = set(re.findall(r"{(\w+)}", path))
        assert named == defined, f"{method.upper()} {path}: {named} vs {defined}"


def test_lists_are_arrays_and_events_a_stream(documents: dict[str, dict[str, Any]]) -> None:
    def ok(document: str, path: str, method: str = "get") -> dict[str, Any]:
        responses = documents[document]["paths"][path][method]["responses"]
        found: dict[str, Any] = next(v for k, v in responses.items() if k.startswith("2"))
        return found["content"]

    for document, path in [
        ("jobs", "/api/jobs"),
        ("registry", "/api/registry/models"),
        ("registry", "/api/registry/models/{name}/versions"),
        ("lake", "/api/lake/datasets"),
        ("lake", "/api/lake/datasets/{name}/schema"),
    ]:
        assert ok(document, path)["application/json"]["schema"]["type"] == "array", path
    assert set(ok("jobs", "/api/jobs/{job_id}/events")) == {"text/event-stream"}
    artifact = ok("registry", "/api/registry/models/{name}/versions/{ref}/artifact")
    assert set(artifact) == {"application/octet-stream"}
    query = ok("lake", "/api/lake/query", "post")["application/json"]["schema"]
    assert query == {"$ref": "#/components/schemas/QueryAnswer"}


def test_the_name_rules_are_in_the_schemas(documents: dict[str, dict[str, Any]]) -> None:
    registry = documents["registry"]
    model = registry["paths"]["/api/registry/models/{name}"]["get"]["parameters"][0]
    assert model["schema"]["pattern"] == MODEL_NAME.pattern
    body = registry["components"]["schemas"]["ModelCreate"]["properties"]["name"]
    assert body["pattern"] == MODEL_NAME.pattern
    archive = registry["paths"]["/api/registry/models/{name}/versions/{number}/archive"]["post"]
    number = next(p for p in archive["parameters"] if p["name"] == "number")["schema"]
    assert (number["minimum"], number["maximum"]) == (1, 2**63 - 1)
    lake = documents["lake"]["paths"]["/api/lake/datasets/{name}"]["get"]["parameters"][0]
    assert re.fullmatch(lake["schema"]["pattern"], "transactions")
    assert not re.fullmatch(lake["schema"]["pattern"], "Transactions")
    query = documents["lake"]["components"]["schemas"]["QueryRequest"]["properties"]["limit"]
    assert {"type": "integer", "minimum": 1, "maximum": LakeSettings().max_query_rows} in (
        query["anyOf"]
    )
    for name in ("model", "gateway"):
        infer = documents[name]["paths"]["/v2/models/{name}/versions/{version}/infer"]
        assert {p["name"] for p in infer["parameters"]} == {"name", "version"}


def test_the_gateway_document_covers_every_service_it_routes(
    documents: dict[str, dict[str, Any]],
) -> None:
    gateway = documents["gateway"]
    for name in SERVICES:
        theirs = {p for p in documents[name]["paths"] if p.startswith("/api/")}
        assert theirs and theirs <= set(gateway["paths"]), name
        for path in theirs:  # what the gateway adds: no instance, an upstream failing
            for operation in gateway["paths"][path].values():
                assert {"502", "503", "504"} <= set(operation["responses"]), path
                assert operation["security"], path
    oip = [p for p in gateway["paths"] if p.startswith("/v2/models/")]
    assert len(oip) == 6
    assert "/health" in gateway["paths"] and "/api/registry/health" not in gateway["paths"]


def test_services_name_no_schema_two_ways(documents: dict[str, dict[str, Any]]) -> None:
    """The merged document keeps one schema per name: no two services may disagree on it."""
    seen: dict[str, Any] = {}
    for name in (*SERVICES, "gateway"):
        for key, schema in documents[name].get("components", {}).get("schemas", {}).items():
            assert seen.setdefault(key, schema) == schema, f"{name} redefines {key}"


@pytest.mark.parametrize("name", ["model", "gateway"])
def test_every_infer_operation_documents_the_deadline_header(
    documents: dict[str, dict[str, Any]], name: str
) -> None:
    infers = [
        (path, operation)
        for path, method, operation, _ in _operations(documents[name])
        if path.endswith("/infer") or path == "/v2/aggregate"
    ]
    assert len(infers) >= 2
    for path, operation in infers:
        headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        assert headers["x-aimesh-deadline-ms"]["schema"]["type"] == "integer"
        # Past it, a 504 (an aggregate says so per model, in its 200).
        assert "504" in operation["responses"] or path == "/v2/aggregate"

"""Every kind of server answers ``/docs`` with Swagger UI from its own files, and its
``/openapi.json`` is true to what it answers.

The FastAPI services (registry, lake, jobs), a model service and the gateway, each a real
process: the page names no ``http(s)://`` URL, each asset it names is served from the server
with its content type, and a name outside the served list, or a path out of the folder, is
404; a 405 names every method of its path in ``Allow``. Whether each document is true to
what its service answers is the fuzzing gate's (``make fuzz``, tests/fuzz/run.py).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import pytest
from _services import ECHO_MODEL, Home, Service, wait_for

from aimesh.registry import push_model

KINDS = ["registry", "model", "gateway"]
ADMIN = "docs-admin-key"
AS_ADMIN = {"X-API-Key": ADMIN}
KEYS = [{"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["admin"]}]
TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> Iterator[dict[str, Service]]:
    root = tmp_path_factory.mktemp("docs")
    home = Home.create(root, nats_url, np.zeros((1, 1)), AIMESH_AUTH__KEYS=json.dumps(KEYS))
    registry = home.registry(allow_code_artifacts=True)
    echo = root / "echo.py"
    echo.write_text(ECHO_MODEL)
    push_model(registry, "echo", echo, trusted=True)
    home.publish(registry)
    registry.close()
    kinds = ["registry", "lake", "jobs"]
    starts = [
        *(lambda kind=kind: home.service(kind) for kind in kinds),
        lambda: home.serve("echo@1"),
    ]
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    running: dict[str, Service] = {}
    for kind, future in zip([*kinds, "model"], futures, strict=True):
        if future.exception() is None:
            running[kind] = future.result()
    try:
        assert len(running) == len(starts), [f.exception() for f in futures]
        running["gateway"] = gateway = home.gateway()
        # The services announce themselves a moment after they answer: wait for all three.
        merged = f"{gateway.http}/openapi.json"
        assert wait_for(
            lambda: (
                {"/api/registry/models", "/api/lake/datasets", "/api/jobs"}
                <= set(httpx.get(merged).json()["paths"])
            )
        )
        yield running
    finally:
        for service in running.values():
            service.stop()


def _raw_status(base: str, target: str) -> int:
    """The status for ``target`` sent as it is (httpx would resolve ``..`` itself)."""
    address = urlsplit(base)
    conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    try:
        conn.request("GET", target)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("kind", KINDS)
def test_docs_page_loads_swagger_ui_from_the_server_itself(
    servers: dict[str, Service], kind: str
) -> None:
    base = servers[kind].http
    page = httpx.get(f"{base}/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert re.search(r"https?://", page.text) is None, "the page must not load from a CDN"
    assert "SwaggerUIBundle(" in page.text and "/openapi.json" in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    named = {Path(urlsplit(url).path).name for url in urls}
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= named <= set(TYPES)
    for url in urls:
        asset = httpx.get(urljoin(base, url))
        name = Path(urlsplit(url).path).name
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(TYPES[name]), url
        assert "max-age=" in asset.headers["cache-control"]
        assert len(asset.content) > 1000
    bundle = httpx.get(f"{base}/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content and len(bundle.content) > 500_000
    assert b".swagger-ui" in httpx.get(f"{base}/docs/assets/swagger-ui.css").content


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "target",
    [
        "/docs/assets/nope.js",
        "/docs/assets/redoc.standalone.js",  # in the package's folder, not on the list
        "/docs/assets/",
        "/docs/assets/..%2F..%2Fpyproject.toml",
        "/docs/assets/..%2F__init__.py",
        "/docs/assets/../x",
        "/docs/assets/static/swagger-ui.css",
    ],
)
def test_only_the_listed_assets_are_served(
    servers: dict[str, Service], kind: str, target: str
) -> None:
    assert _raw_status(servers[kind].http, target) == 404


def test_the_gateway_answers_its_own_docs_assets(servers: dict[str, Service]) -> None:
    gateway = servers["gateway"].http
    page = httpx.get(f"{gateway}/docs").text
    assert "<title>aimesh gateway</title>" in page
    ours = httpx.get(f"{gateway}/docs/assets/swagger-ui.css")
    theirs = httpx.get(f"{servers['registry'].http}/docs/assets/swagger-ui.css")
    assert ours.status_code == 200 and ours.content == theirs.content


@pytest.mark.parametrize(
    ("kind", "method", "path", "allowed"),
    [
        ("registry", "OPTIONS", "/api/registry/models/echo", {"GET", "PATCH"}),
        ("registry", "DELETE", "/api/registry/models", {"GET", "POST"}),
        ("lake", "PUT", "/api/lake/datasets/tx", {"GET"}),
        ("jobs", "DELETE", "/api/jobs", {"GET", "POST"}),
        ("gateway", "OPTIONS", "/api/registry/models/echo", {"GET", "PATCH"}),
        ("gateway", "GET", "/v2/models/echo/infer", {"POST"}),
        ("gateway", "POST", "/v2/health/ready", {"GET", "HEAD"}),
        ("gateway", "DELETE", "/docs/assets/swagger-ui.css", {"GET", "HEAD"}),
        ("model", "PUT", "/v2/models/echo", {"GET", "HEAD"}),
        ("model", "POST", "/openapi.json", {"GET", "HEAD"}),
    ],
)
def test_a_405_names_every_method_of_its_path(
    servers: dict[str, Service], kind: str, method: str, path: str, allowed: set[str]
) -> None:
    answer = httpx.request(method, servers[kind].http + path, headers=AS_ADMIN)
    assert answer.status_code == 405, answer.text
    assert answer.json()["code"] == "method_not_allowed"
    assert set(answer.headers["allow"].split(", ")) == allowed

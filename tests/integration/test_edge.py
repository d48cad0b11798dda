"""The HTTP edge of every service, against real processes: origins, Host, media types, limits.

One stack serves the module (registry, lake, jobs, a model service, the gateway, a worker's
health port), with small JSON body limits. The bind checks start their own processes: each
refuses a keyless non-loopback bind at once; ``--insecure`` starts and warns.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _services import Home, Service, free_port, run_aimesh, start, wait_for

LIMIT = 20_000
# Six processes start at once on a small, shared machine: give them time.
START_S = 240.0
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    fraud_data: tuple[np.ndarray, np.ndarray],
) -> Home:
    root = tmp_path_factory.mktemp("edge")
    return Home.with_fraud(
        root,
        nats_url,
        fraud_data,
        AIMESH_REGISTRY__MAX_REQUEST_BYTES=str(LIMIT),
        AIMESH_LAKE__MAX_REQUEST_BYTES=str(LIMIT),
        AIMESH_JOBS__MAX_REQUEST_BYTES=str(LIMIT),
    )


def _service(home: Home, *argv: str, ready_path: str = "/health") -> Service:
    port = free_port()
    return start(
        [*argv, "--port", str(port)],
        env=home.env,
        log=home.settings.home_dir / f"{argv[0]}-{port}.log",
        http=f"http://127.0.0.1:{port}",
        ready_path=ready_path,
        wait_s=START_S,
    )


def _model(home: Home) -> Service:
    http, grpc = free_port(), free_port()
    return start(
        ["serve", "fraud@champion", "--http-port", str(http), "--grpc-port", str(grpc)],
        env=home.env,
        log=home.settings.home_dir / f"serve-{http}.log",
        http=f"http://127.0.0.1:{http}",
        ready_path="/v2/health/ready",
        wait_s=START_S,
    )


def _gateway(home: Home) -> Service:
    http, grpc = free_port(), free_port()
    return start(
        ["gateway", "serve", "--port", str(http), "--grpc-port", str(grpc)],
        env=home.env,
        log=home.settings.home_dir / f"gateway-{http}.log",
        http=f"http://127.0.0.1:{http}",
        ready_path="/health",
        wait_s=START_S,
    )


@pytest.fixture(scope="module")
def stack(home: Home) -> Iterator[dict[str, Service]]:
    """Every kind of HTTP service aimesh runs, by name; the gateway in front of them."""
    starts = {
        "registry": lambda: _service(home, "registry", "serve"),
        "lake": lambda: _service(home, "lake", "serve"),
        "jobs": lambda: _service(home, "jobs", "serve"),
        "model": lambda: _model(home),
        "worker": lambda: _service(home, "worker", "noop"),
    }
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = {name: pool.submit(begin) for name, begin in starts.items()}
    running = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for future in futures.values():
            future.result()  # the first that failed, once the others are in `running`
        running["gateway"] = gateway = _gateway(home)
        # Ready once discovery lists what it fronts.
        assert wait_for(lambda: httpx.get(f"{gateway.http}/api/jobs").status_code == 200)
        assert wait_for(lambda: httpx.get(f"{gateway.http}/api/registry/models").status_code == 200)
        assert wait_for(lambda: _infer(gateway.http, home.x).status_code == 200)
        yield running
    finally:
        for service in running.values():
            service.stop()


def _infer_body(x: np.ndarray) -> dict[str, object]:
    rows = x[:2]
    return {
        "inputs": [
            {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
             "data": rows.ravel().tolist()}
        ]
    }  # fmt: skip


def _infer(base: str, x: np.ndarray, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{base}/v2/models/fraud/infer", json=_infer_body(x), **kwargs)  # type: ignore[arg-type]


def _changes(stack: dict[str, Service], x: np.ndarray) -> list[tuple[str, str, str, object]]:
    """One changing request per service: (what, method, URL, JSON body)."""
    reg, lake, jobs = stack["registry"].http, stack["lake"].http, stack["jobs"].http
    gw, model, worker = stack["gateway"].http, stack["model"].http, stack["worker"].http
    job = {"kind": "noop", "payload": {}}
    return [
        ("registry", "POST", f"{reg}/api/registry/models", {"name": "from-a-page"}),
        ("registry", "PUT", f"{reg}/api/registry/models/fraud/aliases/x", {"version": 1}),
        ("lake", "POST", f"{lake}/api/lake/query", {"sql": "select 1 as x"}),
        ("lake", "POST", f"{lake}/api/lake/datasets/tx/vacuum", None),
        ("jobs", "POST", f"{jobs}/api/jobs", job),
        ("model", "POST", f"{model}/v2/models/fraud/infer", _infer_body(x)),
        ("gateway", "POST", f"{gw}/v2/models/fraud/infer", _infer_body(x)),
        ("gateway", "POST", f"{gw}/v2/models/fraud/infer?async=true", _infer_body(x)),
        ("gateway", "POST", f"{gw}/api/jobs", job),
        ("worker", "POST", f"{worker}/health", None),
    ]


def _jobs(stack: dict[str, Service]) -> int:
    return len(httpx.get(f"{stack['jobs'].http}/api/jobs", params={"limit": 10_000}).json())


def test_a_browser_origin_cannot_change_anything_on_any_service(
    home: Home, stack: dict[str, Service]
) -> None:
    jobs_before = _jobs(stack)
    for what, method, url, body in _changes(stack, home.x):
        r = httpx.request(method, url, json=body, headers={"Origin": EVIL})
        assert (r.status_code, r.json()["code"]) == (403, "origin_refused"), (what, url, r.text)
        assert EVIL in r.json()["error"]
    assert _jobs(stack) == jobs_before
    models = httpx.get(f"{stack['registry'].http}/api/registry/models").json()
    assert "from-a-page" not in [m["name"] for m in models]


def test_requests_without_origin_or_from_the_services_own_page_pass(
    home: Home, stack: dict[str, Service]
) -> None:
    reg = stack["registry"].http
    own = httpx.post(
        f"{reg}/api/registry/models", json={"name": "from-docs"}, headers={"Origin": reg}
    )
    assert own.status_code == 201, own.text
    gateway = stack["gateway"].http  # its /docs page, trying a route of the registry
    proxied = httpx.post(
        f"{gateway}/api/registry/models", json={"name": "via-docs"}, headers={"Origin": gateway}
    )
    assert proxied.status_code == 201, proxied.text
    reads = httpx.get(f"{reg}/api/registry/models", headers={"Origin": EVIL})
    assert reads.status_code == 200  # reading is not refused for its origin
    assert _infer(stack["model"].http, home.x).status_code == 200
    assert _infer(stack["gateway"].http, home.x).status_code == 200


def test_a_text_plain_submission_is_refused_and_queues_nothing(stack: dict[str, Service]) -> None:
    body = json.dumps({"kind": "noop", "payload": {}})
    jobs_before = _jobs(stack)
    for base in (stack["jobs"].http, stack["gateway"].http):
        for headers in ({"Content-Type": "text/plain"}, {}):  # a form, and a type-less Blob
            r = httpx.post(f"{base}/api/jobs", content=body, headers=headers)
            assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type"), r.text
    assert _jobs(stack) == jobs_before
    plain = {"Content-Type": "text/plain"}
    for url, sent in (
        (f"{stack['registry'].http}/api/registry/models", {"name": "plain"}),
        (f"{stack['lake'].http}/api/lake/query", {"sql": "select 1"}),
    ):
        r = httpx.post(url, content=json.dumps(sent), headers=plain)
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type"), r.text
    r = httpx.post(f"{stack['jobs'].http}/api/jobs", content=body, headers={
        "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 202, r.text


class _Mkdir:
    """Unpickled, makes a folder: the proof that something ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def test_the_pickle_is_a_real_payload(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Mkdir(control)))  # the very thing no endpoint may do
    assert control.is_dir()


@pytest.mark.parametrize(
    "content_type",
    ["application/octet-stream", "application/x-pickle", "application/vnd.aimesh+pickle"],
)
def test_a_pickle_is_never_unpickled_by_a_data_plane_endpoint(
    stack: dict[str, Service], tmp_path: Path, content_type: str
) -> None:
    sentinel = tmp_path / "ran"
    payload = pickle.dumps(_Mkdir(sentinel))
    jobs_before = _jobs(stack)
    gw, model = stack["gateway"].http, stack["model"].http
    urls = [
        f"{model}/v2/models/fraud/infer",
        f"{model}/v2/models/fraud/versions/1/infer",
        f"{gw}/v2/models/fraud/infer",
        f"{gw}/v2/models/fraud/infer?async=true",
        f"{gw}/v2/aggregate",
        f"{stack['jobs'].http}/api/jobs",
        f"{gw}/api/jobs",
    ]
    for url in urls:
        for headers in ({}, {"Inference-Header-Content-Length": "4"}):
            r = httpx.post(url, content=payload, headers={"Content-Type": content_type, **headers})
            assert 400 <= r.status_code < 500, (url, r.status_code, r.text)
            assert r.json()["code"] in {"unsupported_media_type", "invalid_request"}, r.text
    assert not sentinel.exists()
    assert _jobs(stack) == jobs_before


@pytest.mark.parametrize("name", ["registry", "lake", "jobs", "model", "gateway", "worker"])
def test_a_foreign_host_is_refused(stack: dict[str, Service], name: str) -> None:
    service = stack[name]
    path = "/v2/health/live" if name == "model" else "/health"
    for host in ("evil.example", "evil.example:80", "localhost.evil.example", "10.9.8.7"):
        r = httpx.get(service.http + path, headers={"Host": host})
        assert (r.status_code, r.json()["code"]) == (400, "host_refused"), (host, r.text)
    for host in ("localhost", f"127.0.0.1:{service.http.rsplit(':', 1)[1]}", "[::1]:1"):
        assert httpx.get(service.http + path, headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    ("name", "path", "body"),
    [
        ("registry", "/api/registry/models", lambda pad: {"name": "big", "description": pad}),
        ("lake", "/api/lake/query", lambda pad: {"sql": f"select '{pad}' as x"}),
        ("jobs", "/api/jobs", lambda pad: {"kind": "noop", "payload": {"pad": pad}}),
    ],
)
def test_a_body_past_the_limit_is_413_and_the_service_keeps_serving(
    stack: dict[str, Service], name: str, path: str, body: object
) -> None:
    url = stack[name].http + path
    big = json.dumps(body("x" * LIMIT)).encode()  # type: ignore[operator]
    declared = httpx.post(url, content=big, headers={"Content-Type": "application/json"})
    assert (declared.status_code, declared.json()["code"]) == (413, "request_too_large")
    assert declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for at in range(0, len(big), 4096):
            yield big[at : at + 4096]

    streamed = httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert (streamed.status_code, streamed.json()["code"]) == (413, "request_too_large")
    small = httpx.post(url, json=body("y" * 100))  # type: ignore[operator]
    assert small.status_code in (200, 201, 202), small.text


# -- where a service may bind -----------------------------------------------------------------


def _exposed(home: Home) -> list[list[str]]:
    p, q = str(free_port()), str(free_port())
    return [
        ["registry", "serve", "--host", "0.0.0.0", "--port", p],
        ["lake", "serve", "--host", "0.0.0.0", "--port", p],
        ["jobs", "serve", "--host", "0.0.0.0", "--port", p],
        ["serve", "fraud@champion", "--host", "0.0.0.0", "--http-port", p, "--grpc-port", q],
        ["gateway", "serve", "--host", "0.0.0.0", "--port", p, "--grpc-port", q],
        ["worker", "noop", "--host", "0.0.0.0", "--port", p],
    ]


def test_a_keyless_bind_beyond_loopback_refuses_to_start(home: Home, tmp_path: Path) -> None:
    commands = _exposed(home)
    project = tmp_path / "aimesh.yaml"
    project.write_text(
        f"home: {home.settings.home_dir}\nregistry:\n  host: 0.0.0.0\n"
        "services:\n  lake: false\n  jobs: false\n  gateway: false\n  workers: []\n"
    )
    commands.append(["up", "-f", str(project)])
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda argv: run_aimesh(home.env, *argv, ok=False), commands))
    for argv, result in zip(commands, results, strict=True):
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert "(insecure_bind)" in result.stderr, (argv, result.stderr)
        assert "0.0.0.0" in result.stderr and "--insecure" in result.stderr
        assert "Traceback" not in result.stderr


def test_with_insecure_it_starts_and_warns(home: Home) -> None:
    port = free_port()
    log = home.settings.home_dir / f"insecure-{port}.log"
    service = start(
        ["registry", "serve", "--host", "0.0.0.0", "--port", str(port), "--insecure"],
        env=home.env,
        log=log,
        http=f"http://127.0.0.1:{port}",  # connect only to loopback
        ready_path="/health",
    )
    try:
        assert service.proc.poll() is None
    finally:
        service.stop()
    text = log.read_text()
    assert "warning" in text and "0.0.0.0 with no API key" in text


def test_the_insecure_option_is_offered_by_every_serving_command() -> None:
    for argv in (["registry", "serve"], ["lake", "serve"], ["jobs", "serve"], ["serve"],
                 ["gateway", "serve"], ["worker"]):  # fmt: skip
        shown = subprocess.run(
            [sys.executable, "-m", "aimesh", *argv, "--help"],
            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120,
        )  # fmt: skip
        assert "--insecure" in shown.stdout, argv


def test_a_key_made_with_the_cli_lets_a_service_bind_beyond_loopback(
    tmp_path: Path, nats_url: str, fraud_data: tuple[np.ndarray, np.ndarray]
) -> None:
    keyed = Home.create(tmp_path / "keyed", nats_url, fraud_data[0])
    run_aimesh(keyed.env, "keys", "create", "ops", "--scope", "admin")
    port = free_port()
    log = tmp_path / "keyed.log"
    service = start(
        ["registry", "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=keyed.env,
        log=log,
        http=f"http://127.0.0.1:{port}",  # connect only to loopback
        ready_path="/health",
    )
    try:
        assert service.proc.poll() is None
    finally:
        service.stop()
    assert "no API key" not in log.read_text()

"""Keys on every port: registry, lake, jobs, a model service, a worker and the gateway.

One stack for the module, in a home whose keys were made with ``aimesh keys create``
(stored in the registry database). Every route of every service answers 401 without a key
and 403 with too small a scope, on its own port and through the gateway; revoking a key
takes effect on the event, without a restart (the periodic reload is set to an hour).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from _services import (
    Home,
    Service,
    free_port,
    run_aimesh,
    start,
    wait_for,
)

from aimesh.protocol import grpc as pb

SCOPES = {"reader": "read", "inferer": "infer", "writer": "write", "admin": "admin"}
# The key of a scope too small for what a route needs.
TOO_SMALL = {"read": "inferer", "infer": "reader", "write": "reader", "admin": "writer"}
SERVICES = ("registry", "lake", "jobs")


def _make_key(home: Home, name: str, scope: str) -> str:
    done = run_aimesh(home.env, "keys", "create", name, "--scope", scope)
    key = done.stdout.strip()
    assert key.startswith("amk_") and "\n" not in key, done.stdout
    assert "not stored" in done.stderr
    return key


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    fraud_data: tuple[np.ndarray, np.ndarray],
) -> Home:
    root = tmp_path_factory.mktemp("auth")
    return Home.with_fraud(root, nats_url, fraud_data, AIMESH_AUTH__RELOAD_S="3600")


@pytest.fixture(scope="module")
def keys(home: Home) -> dict[str, str]:
    return {name: _make_key(home, name, scope) for name, scope in SCOPES.items()}


def _start(home: Home, name: str, *argv: str, ready_path: str = "/health") -> Service:
    port = free_port()
    return start(
        [*argv, "--port", str(port)],
        env=home.env,
        log=home.settings.home_dir / f"{name}.log",
        http=f"http://127.0.0.1:{port}",
        ready_path=ready_path,
    )


@pytest.fixture(scope="module")
def stack(home: Home, keys: dict[str, str]) -> Iterator[dict[str, Service]]:
    running: dict[str, Service] = {}
    try:
        running["registry"] = home.registry_service()
        running["lake"] = _start(home, "lake", "lake", "serve")
        running["jobs"] = _start(home, "jobs", "jobs", "serve")
        running["model"] = home.serve("fraud@champion")
        running["worker"] = _start(home, "worker", "worker", "inference")
        running["gateway"] = gateway = home.gateway()
        admin = {"x-api-key": keys["admin"]}
        for service in SERVICES:  # found in discovery, proxied
            url = f"{gateway.http}/api/{service}/openapi-probe"
            assert wait_for(lambda u=url: httpx.get(u, headers=admin).status_code != 503)
        yield running
    finally:
        for service in reversed(running.values()):
            service.stop()


def _as(key: str) -> dict[str, str]:
    return {"x-api-key": key}


# -- every route of the FastAPI services --------------------------------------------------------


def _routes(base: str) -> list[tuple[str, str, str | None]]:
    """(method, path, what it needs) for every operation the service's document lists."""
    document = httpx.get(f"{base}/openapi.json").json()
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = operation.get("x-aimesh-scope")
            needed = None if declared == "open" else declared
            if declared is None:
                needed = "read" if method in ("get", "head") else "write"
            concrete = path.replace("{job_id}", "0" * 32)
            while "{" in concrete:
                start_, end = concrete.index("{"), concrete.index("}")
                concrete = concrete[:start_] + "x" + concrete[end + 1 :]
            found.append((method.upper(), concrete, needed))
    return found


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("through_gateway", [False, True], ids=["own port", "gateway"])
def test_every_route_needs_a_key_and_enough_scope(
    stack: dict[str, Service], keys: dict[str, str], service: str, through_gateway: bool
) -> None:
    own = stack[service].http
    base = stack["gateway"].http if through_gateway else own
    routes = _routes(own)
    assert len(routes) >= 5
    checked = 0
    for method, path, needed in routes:
        if needed is None:
            continue
        url = base + path
        bare = httpx.request(method, url, json={}, timeout=30)
        assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized"), (method, path)
        assert bare.headers["www-authenticate"].startswith("Bearer")
        if needed == "authenticated":
            continue  # one job: read, or infer for one's own (below)
        small = httpx.request(method, url, json={}, headers=_as(keys[TOO_SMALL[needed]]))
        assert (small.status_code, small.json()["code"]) == (403, "forbidden"), (method, path)
        checked += 1
    assert checked >= 3
    for path in ("/health", "/openapi.json", "/docs"):
        assert httpx.get(own + path).status_code == 200, path


@pytest.mark.parametrize("through_gateway", [False, True], ids=["own port", "gateway"])
def test_read_can_list_and_show_but_not_change(
    stack: dict[str, Service], keys: dict[str, str], through_gateway: bool
) -> None:
    reader = _as(keys["reader"])

    def url(service: str, path: str) -> str:
        base = stack["gateway"].http if through_gateway else stack[service].http
        return f"{base}/api/{service}{path}"

    assert httpx.get(url("registry", "/models"), headers=reader).status_code == 200
    assert httpx.get(url("registry", "/models/fraud/versions/1"), headers=reader).is_success
    assert httpx.get(url("lake", "/datasets"), headers=reader).status_code == 200
    assert httpx.get(url("jobs", ""), headers=reader).status_code == 200
    refused = [
        httpx.post(url("registry", "/models"), json={"name": "nope"}, headers=reader),
        httpx.put(url("registry", "/models/fraud/aliases/x"), json={"version": 1}, headers=reader),
        httpx.post(url("jobs", ""), json={"kind": "inference"}, headers=reader),
        httpx.get(url("registry", "/keys"), headers=reader),
    ]
    assert [r.status_code for r in refused] == [403] * 4


def test_a_change_is_recorded_as_made_by_the_key_that_made_it(
    stack: dict[str, Service], keys: dict[str, str]
) -> None:
    registry = stack["registry"].http
    made = httpx.post(
        f"{registry}/api/registry/models",
        json={"name": "by-writer"},
        headers={**_as(keys["writer"]), "X-Aimesh-Actor": "someone-else"},
    )
    assert made.status_code == 201, made.text
    history = httpx.get(
        f"{registry}/api/registry/models/by-writer/history", headers=_as(keys["reader"])
    ).json()
    # The key's holder; what a header claims is only detail beneath it, never the actor.
    assert history[0]["actor"] == "writer (someone-else)"
    plain = httpx.post(
        f"{registry}/api/registry/models", json={"name": "by-writer-2"}, headers=_as(keys["writer"])
    )
    assert plain.status_code == 201, plain.text
    history = httpx.get(
        f"{registry}/api/registry/models/by-writer-2/history", headers=_as(keys["reader"])
    ).json()
    assert history[0]["actor"] == "writer"


# -- the model service, the worker, the gateway's own routes -----------------------------------


def _infer_body(home: Home) -> dict[str, Any]:
    x = home.x[:2]
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP64",
                "data": x.ravel().tolist(),
            }
        ]
    }


@pytest.mark.parametrize("server", ["model", "gateway"])
def test_model_routes_need_infer_and_metrics_need_read(
    home: Home, stack: dict[str, Service], keys: dict[str, str], server: str
) -> None:
    base = stack[server].http
    routes = [
        ("POST", "/v2/models/fraud/infer"),
        ("GET", "/v2/models/fraud"),
        ("GET", "/v2/models/fraud/ready"),
    ]
    body = _infer_body(home)
    for method, path in routes:
        bare = httpx.request(method, base + path, json=body)
        assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized"), path
        small = httpx.request(method, base + path, json=body, headers=_as(keys["reader"]))
        assert (small.status_code, small.json()["code"]) == (403, "forbidden"), path
        ok = httpx.request(method, base + path, json=body, headers=_as(keys["inferer"]))
        assert ok.status_code == 200, (path, ok.text)
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers=_as(keys["inferer"])).status_code == 403
    assert httpx.get(f"{base}/metrics", headers=_as(keys["reader"])).status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/v2"):  # open, as on gRPC
        assert httpx.get(base + path).status_code == 200, path


def test_the_workers_health_is_open_and_its_metrics_need_read(
    stack: dict[str, Service], keys: dict[str, str]
) -> None:
    worker = stack["worker"].http
    assert httpx.get(f"{worker}/health").status_code == 200
    bare = httpx.get(f"{worker}/metrics")
    assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized")
    assert httpx.get(f"{worker}/metrics", headers=_as(keys["inferer"])).status_code == 403
    assert httpx.get(f"{worker}/metrics", headers=_as(keys["reader"])).status_code == 200


@pytest.mark.parametrize("server", ["model", "gateway"])
def test_grpc_model_calls_need_infer_and_health_and_server_metadata_are_open(
    home: Home, stack: dict[str, Service], keys: dict[str, str], server: str
) -> None:
    with grpc.insecure_channel(stack[server].grpc) as channel:
        stub = pb.GRPCInferenceServiceStub(channel)
        request = pb.ModelMetadataRequest(name="fraud")
        # Health and server metadata are open, as on REST.
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30).name
        for metadata, code in [
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("x-api-key", "amk_wrong"),), grpc.StatusCode.UNAUTHENTICATED),
            ((("x-api-key", keys["reader"]),), grpc.StatusCode.PERMISSION_DENIED),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelMetadata(request, metadata=metadata, timeout=30)
            assert caught.value.code() == code
        answer = stub.ModelMetadata(request, metadata=(("x-api-key", keys["inferer"]),))
        assert answer.name == "fraud"


def test_an_async_call_runs_as_its_submitter_who_may_read_its_own_job(
    home: Home, stack: dict[str, Service], keys: dict[str, str]
) -> None:
    gateway = stack["gateway"].http
    inferer = _as(keys["inferer"])
    accepted = httpx.post(
        f"{gateway}/v2/models/fraud/infer?async=true", json=_infer_body(home), headers=inferer
    )
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["submitted_by"] == "inferer;infer"
    url = f"{gateway}/api/jobs/{job['id']}"

    def state() -> str:
        found: str = httpx.get(url, headers=inferer).json()["state"]
        return found

    assert wait_for(lambda: state() in ("succeeded", "failed"))
    assert state() == "succeeded", httpx.get(url, headers=inferer).text
    result = httpx.get(f"{url}/result", headers=inferer)
    assert result.status_code == 200 and result.json()["outputs"]
    assert httpx.get(url, headers=_as(keys["reader"])).status_code == 200
    # Another infer key may not read it, and no key may at all.
    other = _make_key(home, "other-app", "infer")
    assert wait_for(lambda: httpx.get(url, headers=_as(other)).status_code == 403)
    assert httpx.get(url).status_code == 401


# -- revocation, throttling, the CLI, what is stored -----------------------------------------


def test_a_revoked_key_stops_working_everywhere_without_a_restart(
    home: Home, stack: dict[str, Service]
) -> None:
    late = _make_key(home, "late", "write")  # made after every service started
    probes = {
        "registry": f"{stack['registry'].http}/api/registry/models",
        "lake": f"{stack['lake'].http}/api/lake/datasets",
        "jobs": f"{stack['jobs'].http}/api/jobs",
        "model": f"{stack['model'].http}/v2/models/fraud",
        "worker": f"{stack['worker'].http}/metrics",
        "gateway": f"{stack['gateway'].http}/api/registry/models",
    }
    for name, url in probes.items():  # heard on the bus (the periodic reload is an hour)
        assert wait_for(lambda u=url: httpx.get(u, headers=_as(late)).status_code == 200), name
    run_aimesh(home.env, "keys", "revoke", "late")
    for name, url in probes.items():
        assert wait_for(lambda u=url: httpx.get(u, headers=_as(late)).status_code == 401), name


@pytest.mark.parametrize("server", ["lake", "gateway"])
def test_repeated_bad_keys_are_throttled_per_client(
    stack: dict[str, Service], keys: dict[str, str], server: str
) -> None:
    url = f"{stack[server].http}/api/lake/datasets"
    # Another loopback address than every other test's: only this client is throttled.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=30) as guesser:
        answers = [guesser.get(url, headers=_as(f"amk_guess{i}")).status_code for i in range(10)]
        assert answers == [401] * 10
        throttled = guesser.get(url, headers=_as(keys["reader"]))
    assert (throttled.status_code, throttled.json()["code"]) == (429, "auth_throttled")
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert httpx.get(url, headers=_as(keys["reader"])).status_code == 200  # others are not


def test_the_keys_cli_lists_and_revokes_locally_and_through_the_registry(
    home: Home, stack: dict[str, Service], keys: dict[str, str]
) -> None:
    listed = run_aimesh(home.env, "keys", "list").stdout
    for name in SCOPES:
        assert name in listed
    assert not any(key in listed for key in keys.values())
    remote = {**home.env, "AIMESH_REGISTRY__URL": stack["registry"].http}
    made = run_aimesh(remote, "keys", "create", "remote-made", "--scope", "read").stdout.strip()
    assert made.startswith("amk_")  # the service credential holds admin
    assert "remote-made" in run_aimesh(remote, "keys", "list").stdout
    as_reader = {**remote, "AIMESH_REGISTRY__API_KEY": keys["reader"]}
    refused = run_aimesh(as_reader, "keys", "list", ok=False)
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    run_aimesh(remote, "keys", "revoke", "remote-made")
    gone = run_aimesh(remote, "keys", "revoke", "remote-made", ok=False)
    assert gone.returncode == 1 and "key_not_found" in gone.stderr


def test_keys_are_never_stored_in_clear(home: Home, keys: dict[str, str]) -> None:
    folder = home.settings.home_dir
    stored = b"".join(p.read_bytes() for p in folder.glob("registry.db*"))
    assert stored
    for key in keys.values():
        assert key.encode() not in stored


def test_the_service_credential_is_private(home: Home, stack: dict[str, Service]) -> None:
    path: Path = home.settings.home_dir / "secrets" / "service.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    started = time.monotonic()
    assert (
        httpx.get(  # accepted by every service as an admin of kind service
            f"{stack['registry'].http}/api/registry/keys",
            headers=_as(path.read_text().strip()),
        ).status_code
        == 200
    )
    assert time.monotonic() - started < 30

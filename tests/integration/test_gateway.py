"""The gateway in front of real model services and a real registry, on the session's NATS.

One gateway (with API keys) serves the module: REST and gRPC equal direct calls, load
spreads, a killed replica is routed around, an A/B split keeps each user on one version,
auth, limits, 404 vs 503, deadlines that travel to the model, aggregation, the registry
proxy, the merged OpenAPI document (fuzzed by the gate: tests/fuzz/run.py), metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest
from _kinds import WIDGET, WidgetSpec, kinds_registered, served
from _services import ECHO_MODEL, Home, Service, free_port, push_fraud_models, wait_for

from aimesh import runtimes
from aimesh.bus import EmbeddedNats, ServiceInstance, connect, discovery_bucket
from aimesh.config import RegistrySettings, Settings
from aimesh.errors import Forbidden, RecordNotFound, Unauthorized
from aimesh.registry import ROLLOUTS, ModelCreate, Registry, open_registry, push_model
from aimesh.registry.app import create_app
from aimesh.registry.client import RegistryClient
from aimesh.rollouts import Split, Sticky, started


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ADMIN, USER, LIMITED = "admin-key-1", "user-key-2", "limited-key-3"
KEYS = [
    {"name": "ops", "sha256": _sha(ADMIN), "scopes": ["infer", "admin"]},
    {"name": "app", "sha256": _sha(USER), "scopes": ["infer"]},
    {"name": "trial", "sha256": _sha(LIMITED), "scopes": ["infer"], "rate_per_s": 1, "burst": 2},
]
AS_ADMIN = {"X-API-Key": ADMIN}
AS_USER = {"Authorization": f"Bearer {USER}"}
GRPC_USER = {"x-api-key": USER}  # gRPC metadata keys are lower-case
MAX_BODY = 300_000
WIDGET_APIS = ("widgets", "gadgets")


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    fraud_data: tuple[np.ndarray, np.ndarray],
) -> Home:
    root = tmp_path_factory.mktemp("gateway")
    x, y = fraud_data
    h = Home.create(
        root, nats_url, x,
        AIMESH_AUTH__KEYS=json.dumps(KEYS),
        AIMESH_GATEWAY__MAX_REQUEST_BYTES=str(MAX_BODY),
    )  # fmt: skip
    registry = h.registry(allow_code_artifacts=True)
    push_fraud_models(registry, root, x, y)  # fraud 1 (champion), 2
    v1 = root / "v1.skops"
    push_model(registry, "fraud", v1, aliases=["next"])  # 3: known, never served
    push_model(registry, "churn", v1)  # served by the replicas the kill test kills
    push_model(registry, "ghost", v1)  # known, never served
    echo = root / "echo.py"
    echo.write_text(ECHO_MODEL)
    push_model(registry, "echo", echo, trusted=True)
    h.publish(registry)
    registry.close()
    return h


def _in_parallel(*starts: Callable[[], Service]) -> list[Service]:
    """Start services at once; if one fails, stop the others (a failed fixture leaks none)."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    errors = [exc for future in futures if (exc := future.exception()) is not None]
    if errors:
        for future in futures:
            if future.exception() is None:
                future.result().stop()
        raise errors[0]
    return [future.result() for future in futures]


@pytest.fixture(scope="module")
def services(home: Home) -> Iterator[dict[str, Service]]:
    """A registry, fraud@1 twice, fraud@2, echo; then the gateway.

    Model services register before they answer, so the gateway's first listing holds them;
    the registry announces itself a moment after it answers, so that one is waited for.
    """
    names = ["registry", "fraud1a", "fraud1b", "fraud2", "echo"]
    started = _in_parallel(
        home.registry_service,
        lambda: home.serve("fraud@1"),
        lambda: home.serve("fraud@1"),
        lambda: home.serve("fraud@2"),
        lambda: home.serve("echo@1"),
    )
    running = dict(zip(names, started, strict=True))
    try:
        gateway = home.gateway()
        running["gateway"] = gateway
        registry = f"{gateway.http}/api/registry/models"
        assert wait_for(lambda: httpx.get(registry, headers=AS_ADMIN).status_code == 200)
        yield running
    finally:
        for service in running.values():
            service.stop()


@pytest.fixture(scope="module")
def gateway(services: dict[str, Service]) -> Service:
    return services["gateway"]


def _body(x: np.ndarray, **extra: object) -> dict[str, object]:
    data = x.ravel().tolist()
    return {
        "inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": data}],
        **extra,
    }


def _metric(gateway: Service, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{gateway.http}/metrics", headers=AS_ADMIN).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the protocol through the gateway ---------------------------------------------------------


def test_rest_through_the_gateway_equals_direct_calls(
    home: Home, services: dict[str, Service], gateway: Service
) -> None:
    body = _body(home.x[:16], id="req-1")
    direct = httpx.post(
        f"{services['fraud1a'].http}/v2/models/fraud/infer", json=body, headers=AS_USER
    )  # a model service checks keys on its own port too
    through = httpx.post(
        f"{gateway.http}/v2/models/fraud/versions/1/infer",
        json=body,
        headers={**AS_USER, "x-request-id": "trace-me-7"},
    )
    assert through.status_code == 200, through.text
    assert through.json() == direct.json()
    assert through.headers["x-request-id"] == "trace-me-7"
    meta = httpx.get(f"{gateway.http}/v2/models/fraud/versions/2", headers=AS_USER).json()
    assert meta["versions"] == ["2"]
    assert httpx.get(f"{gateway.http}/v2", headers=AS_USER).json()["name"] == "aimesh-gateway"
    # Without a version, any instance of the model answers.
    anyone = httpx.post(f"{gateway.http}/v2/models/fraud/infer", json=body, headers=AS_USER)
    assert anyone.json()["model_version"] in {"1", "2"}


def test_an_alias_routes_to_the_version_it_names(home: Home, gateway: Service) -> None:
    r = httpx.post(
        f"{gateway.http}/v2/models/fraud/versions/champion/infer",
        json=_body(home.x[:2]),
        headers=AS_USER,
    )
    assert (r.status_code, r.json()["model_version"]) == (200, "1")


def test_a_rollback_reaches_the_gateway_through_the_alias_events(
    home: Home, gateway: Service
) -> None:
    url = f"{gateway.http}/v2/models/fraud/versions/champion/infer"
    body = _body(home.x[:2])

    def answers(version: str) -> bool:
        r = httpx.post(url, json=body, headers=AS_USER)
        return r.status_code == 200 and r.json()["model_version"] == version

    registry = home.registry()
    try:
        registry.set_alias("fraud", "champion", 2)
        home.publish(registry)
        assert wait_for(lambda: answers("2"))
        back = registry.rollback_alias("fraud", "champion")
        home.publish(registry)
        assert (back.version, back.previous) == (1, 2)
        assert wait_for(lambda: answers("1"))
    finally:
        registry.set_alias("fraud", "champion", 1)  # as the module's other tests expect
        home.publish(registry)
        registry.close()


def test_binary_tensors_and_tritonclient_pass_through_unchanged(
    home: Home, gateway: Service
) -> None:
    import tritonclient.http as httpclient

    x = home.x[:8]
    client = httpclient.InferenceServerClient(gateway.http.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("fraud", headers=dict(AS_USER))
    expected = _runtime(home, "fraud", "1").predict({"input-0": x})
    for binary in (False, True):
        inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer(  # tritonclient adds to the headers it is given: a copy
            "fraud", [inp], outputs=out, model_version="1", headers=dict(AS_USER)
        )
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])
    client.close()


def _runtime(home: Home, name: str, ref: str) -> runtimes.Runtime:
    registry = home.registry()
    version = registry.get_version(name, ref)
    path = registry.fetch_artifact(version)
    registry.close()
    return runtimes.load_runtime(version.framework, path)


def test_grpc_through_the_gateway_equals_direct_calls(
    home: Home, services: dict[str, Service], gateway: Service
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    x = home.x[:8]
    inp = grpcclient.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    direct = grpcclient.InferenceServerClient(services["fraud2"].grpc)
    through = grpcclient.InferenceServerClient(gateway.grpc)
    expected = direct.infer("fraud", [inp], headers=dict(GRPC_USER)).get_response()
    got = through.infer("fraud", [inp], model_version="2", headers=dict(GRPC_USER)).get_response()
    assert got == expected
    assert through.is_server_live() and through.is_server_ready()
    champion = through.infer("fraud", [inp], model_version="champion", headers=dict(GRPC_USER))
    assert champion.get_response().model_version == "1"
    assert through.is_model_ready("fraud", "champion", headers=dict(GRPC_USER))
    assert through.get_model_metadata("fraud", "2", headers=dict(GRPC_USER)).versions == ["2"]
    failures = {
        "no key": lambda: through.infer("fraud", [inp]),
        "unknown": lambda: through.infer(
            "nope", [inp], headers={**GRPC_USER, "x-request-id": "grpc-req-1"}
        ),
        "unserved": lambda: through.infer("ghost", [inp], headers=dict(GRPC_USER)),
        "bad shape": lambda: through.infer("echo", [inp], headers=dict(GRPC_USER)),
    }
    statuses = {}
    messages = {}
    for what, call in failures.items():
        with pytest.raises(InferenceServerException) as caught:
            call()
        statuses[what] = caught.value.status()
        messages[what] = caught.value.message()
    assert statuses == {
        "no key": "StatusCode.UNAUTHENTICATED",
        "unknown": "StatusCode.NOT_FOUND",
        "unserved": "StatusCode.UNAVAILABLE",
        "bad shape": "StatusCode.INVALID_ARGUMENT",  # the model service's own status
    }
    assert all("; request_id " in message for message in messages.values()), messages
    assert "request_id grpc-req-1)" in messages["unknown"]
    direct.close()
    through.close()


# -- load balancing and failure ---------------------------------------------------------------


def test_load_spreads_over_replicas(
    home: Home, services: dict[str, Service], gateway: Service
) -> None:
    a, b = (services[n].http.removeprefix("http://") for n in ("fraud1a", "fraud1b"))
    before = {u: _metric(gateway, "aimesh_gateway_requests_total", upstream=u) for u in (a, b)}
    body = _body(home.x[:1])

    async def main() -> None:
        async with httpx.AsyncClient(base_url=gateway.http, headers=AS_USER) as client:
            for _ in range(20):  # one at a time
                r = await client.post("/v2/models/fraud/versions/1/infer", json=body)
                assert r.status_code == 200
            answers = await asyncio.gather(
                *(client.post("/v2/models/fraud/versions/1/infer", json=body) for _ in range(64))
            )
            assert {r.status_code for r in answers} == {200}

    asyncio.run(main())
    served = {
        u: _metric(gateway, "aimesh_gateway_requests_total", upstream=u) - before[u] for u in (a, b)
    }
    assert sum(served.values()) == 84
    assert min(served.values()) >= 20, served  # each replica took a fair share


def test_a_replica_killed_under_load_is_routed_around(home: Home, gateway: Service) -> None:
    replicas = _in_parallel(lambda: home.serve("churn@1"), lambda: home.serve("churn@1"))
    url = f"{gateway.http}/v2/models/churn/infer"
    assert wait_for(lambda: _both_used(gateway, replicas, url))
    statuses: list[tuple[float, int]] = []
    stop = threading.Event()
    body = _body(home.x[:1])

    def load() -> None:
        with httpx.Client(headers=AS_USER, timeout=30) as client:
            while not stop.is_set():
                try:
                    status = client.post(url, json=body).status_code
                except httpx.TransportError:
                    status = 0  # the gateway dropped the connection: counted as a failure
                statuses.append((time.monotonic(), status))

    threads = [threading.Thread(target=load) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        assert wait_for(lambda: len(statuses) > 100)
        replicas[0].stop(signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(lambda: len([s for t, s in statuses if t > killed_at + 1]) > 100)
        # Started again (as aimesh up restarts it): the new replica gets its share again.
        replicas.append(home.serve("churn@1"))
        assert wait_for(lambda: _both_used(gateway, replicas[1:], url))
    finally:
        stop.set()
        for t in threads:
            t.join()
        for replica in replicas:
            replica.stop()
    failed = [(t, s) for t, s in statuses if s != 200]
    # At most the requests in flight to the killed replica (one per client thread) fail,
    # and only around the moment it died: retries go to the healthy one.
    assert len(failed) <= len(threads), failed
    assert all(killed_at - 0.5 < t < killed_at + 1 for t, _ in failed), failed


def _both_used(gateway: Service, replicas: list[Service], url: str) -> bool:
    for _ in range(4):
        httpx.post(url, json=_body(np.zeros((1, 30))), headers=AS_USER)
    used = [
        _metric(gateway, "aimesh_gateway_requests_total", upstream=r.http.removeprefix("http://"))
        for r in replicas
    ]
    return min(used) > 0


# -- traffic policies -------------------------------------------------------------------------

Answered = tuple[int, str | None, str | None]
"""A status, the version that answered (``model_version``), the policy's arm (a header)."""


async def _as_users(
    url: str, body: object, users: list[str], times: int
) -> dict[str, list[Answered]]:
    """Send ``times`` requests as each of ``users`` (``x-user-id``), interleaved, 32 at once."""
    seen: dict[str, list[Answered]] = {user: [] for user in users}
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(headers=AS_USER, timeout=30) as client:

        async def one(user: str) -> None:
            async with limit:
                r = await client.post(url, json=body, headers={"x-user-id": user})
            version = r.json().get("model_version") if r.status_code == 200 else None
            seen[user].append((r.status_code, version, r.headers.get("x-aimesh-rollout-arm")))

        await asyncio.gather(*(one(user) for _ in range(times) for user in users))
    return seen


def test_an_ab_split_keeps_every_user_on_one_version(home: Home, gateway: Service) -> None:
    url = f"{gateway.http}/v2/models/fraud/infer"
    body = _body(home.x[:1])

    def an_arm() -> str | None:
        r = httpx.post(url, json=body, headers=AS_USER)
        assert r.status_code == 200, r.text
        return r.headers.get("x-aimesh-rollout-arm")

    split = Split(weights={1: 50, 2: 50}, sticky=Sticky(header="x-user-id"))
    registry = home.registry()
    try:
        registry.create_record(
            ROLLOUTS, "fraud", started("fraud", split, "test", datetime.now(UTC))
        )
        home.publish(registry)
        assert wait_for(lambda: an_arm() is not None)
        users = [f"user-{i}" for i in range(50)]
        seen = asyncio.run(_as_users(url, body, users, 20))
        for user, answers in seen.items():
            assert len(answers) == 20 and {status for status, _, _ in answers} == {200}, answers
            versions = {version for _, version, _ in answers}
            assert len(versions) == 1, (user, answers)  # one user, one version, every time
            assert {arm for _, _, arm in answers} == {f"version-{versions.pop()}"}, answers
        # 50 users measure a 50/50 split to ±7 points only (one standard deviation): the
        # share is measured over 1,000 users (±1.6), one request each for the others.
        others = asyncio.run(_as_users(url, body, [f"user-{i}" for i in range(50, 1000)], 1))
        chosen = Counter(answers[0][1] for answers in (seen | others).values())
        assert set(chosen) == {"1", "2"} and abs(chosen["1"] - 500) <= 50, chosen
    finally:
        with contextlib.suppress(RecordNotFound):
            registry.delete_record(ROLLOUTS, "fraud")
        home.publish(registry)
        registry.close()
        wait_for(lambda: an_arm() is None)  # the module's other tests route as before
    # The policy gone: no arm, and one user's requests go to any instance of the model.
    assert an_arm() is None
    answered: set[str] = set()
    one_user = {**AS_USER, "x-user-id": "user-0"}

    def both_versions_answer() -> bool:
        answered.add(httpx.post(url, json=body, headers=one_user).json()["model_version"])
        return answered == {"1", "2"}

    assert wait_for(both_versions_answer), answered


# -- auth and limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("POST", "/v2/models/fraud/infer", {}, 401, "unauthorized"),
        ("POST", "/v2/models/fraud/infer", {"X-API-Key": "wrong"}, 401, "unauthorized"),
        ("POST", "/v2/models/fraud/infer", {"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ("GET", "/api/registry/models", AS_USER, 403, "forbidden"),
        ("GET", "/api/registry/models", {}, 401, "unauthorized"),
        ("POST", "/v2/aggregate", {}, 401, "unauthorized"),
        ("GET", "/v2/models/fraud", {}, 401, "unauthorized"),
    ],
)
def test_keys_and_scopes_are_enforced(
    gateway: Service, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    r = httpx.request(method, gateway.http + path, headers=headers, json={"inputs": []})
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_health_and_docs_stay_open_and_metrics_need_read(gateway: Service) -> None:
    # Server metadata (GET /v2) is open like health, as over gRPC.
    for path in ("/health", "/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json"):
        assert httpx.get(gateway.http + path).status_code == 200, path
    assert httpx.get(f"{gateway.http}/metrics").status_code == 401
    assert httpx.get(f"{gateway.http}/metrics", headers=AS_USER).status_code == 403
    assert httpx.get(f"{gateway.http}/metrics", headers=AS_ADMIN).status_code == 200
    docs = httpx.get(f"{gateway.http}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_key_over_its_rate_gets_429_with_retry_after(gateway: Service) -> None:
    with httpx.Client(base_url=gateway.http, headers={"X-API-Key": LIMITED}) as client:
        answers = [client.get("/v2/models/fraud") for _ in range(3)]
    assert [r.status_code == 429 for r in answers] == [False, False, True]
    assert answers[2].json()["code"] == "rate_limited"
    assert answers[2].headers["retry-after"] == "1"


def test_bodies_over_the_limit_get_413(gateway: Service) -> None:
    big = b'{"inputs": [], "pad": "' + b"x" * MAX_BODY + b'"}'
    r = httpx.post(f"{gateway.http}/v2/models/fraud/infer", content=big, headers=AS_USER)
    assert (r.status_code, r.json()["code"]) == (413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * (MAX_BODY // 5)

    r = httpx.post(f"{gateway.http}/v2/models/fraud/infer", content=chunks(), headers=AS_USER)
    assert (r.status_code, r.json()["code"]) == (413, "request_too_large")


# -- what is unknown, what is unserved --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/models/nope/infer", 404, "model_not_found"),
        ("/v2/models/fraud/versions/9/infer", 404, "version_not_found"),
        ("/v2/models/fraud/versions/nosuch/infer", 404, "alias_not_found"),
        ("/v2/models/ghost/infer", 503, "no_instance"),
        ("/v2/models/fraud/versions/3/infer", 503, "no_instance"),
        ("/v2/models/fraud/versions/next/infer", 503, "no_instance"),
        ("/v2/models/fraud/versions/1/explain", 404, "route_not_found"),
        ("/v2/nothing", 404, "route_not_found"),
    ],
)
def test_unknown_is_404_and_known_but_unserved_is_503_at_once(
    home: Home, gateway: Service, path: str, status: int, code: str
) -> None:
    started = time.monotonic()
    r = httpx.post(gateway.http + path, json=_body(home.x[:1]), headers=AS_USER)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert time.monotonic() - started < 2.0


def test_bad_input_errors_of_the_model_pass_through(gateway: Service) -> None:
    bad = {"inputs": [{"name": "input-0", "shape": [1, 29], "datatype": "FP64", "data": [0] * 29}]}
    r = httpx.post(f"{gateway.http}/v2/models/fraud/versions/1/infer", json=bad, headers=AS_USER)
    assert (r.status_code, r.json()["code"]) == (400, "shape_mismatch")
    r = httpx.post(f"{gateway.http}/v2/models/fraud/infer", content=b"{", headers=AS_USER)
    assert r.status_code == 400


# -- deadlines --------------------------------------------------------------------------------


def _echo(x: float) -> dict[str, object]:
    """An echo request: the model sleeps ``x`` seconds (a negative one fails it: 500)."""
    return {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [x]}]}


def test_a_deadline_travels_to_the_model_which_gives_up_with_its_caller(
    services: dict[str, Service], gateway: Service
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    echo = services["echo"]
    url = f"{gateway.http}/v2/models/echo/infer"

    def given_up() -> float:  # the model service's own count of requests it gave up on
        with_deadline = {"status": "deadline_exceeded", "protocol": "rest"}
        return _metric(echo, "aimesh_inference_requests_total", **with_deadline)

    before = given_up()
    try:
        # The model would answer in 2 s; the caller waits 300 ms.
        r = httpx.post(url, json=_echo(2.0), headers={**AS_USER, "x-aimesh-deadline-ms": "300"})
        assert (r.status_code, r.json()["code"]) == (504, "deadline_exceeded"), r.text
        # The model service was told, and gave up too (else it would have answered 200).
        assert wait_for(lambda: given_up() > before)
        after_rest = given_up()
        # Over gRPC the call's own deadline is the deadline (transcoded: the header again).
        x = np.array([[2.0]])
        inp = grpcclient.InferInput("x", [1, 1], "FP64")
        inp.set_data_from_numpy(x)
        client = grpcclient.InferenceServerClient(gateway.grpc)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("echo", [inp], headers=dict(GRPC_USER), client_timeout=0.3)
        client.close()
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert wait_for(lambda: given_up() > after_rest)
    finally:
        # The model's one thread sleeps on: wait for it, so that later tests find it free.
        assert httpx.post(url, json=_echo(0.0), headers=AS_USER, timeout=60).status_code == 200
    # A deadline passed already: no model is called for it.
    r = httpx.post(url, json=_echo(-1.0), headers={**AS_USER, "x-aimesh-deadline-ms": "0"})
    assert (r.status_code, r.json()["code"]) == (504, "deadline_exceeded"), r.text
    # A deadline that says nothing is a clear 400, before any model is called.
    for bad in ("soon", "-1", "1.5"):
        r = httpx.post(url, json=_echo(0.0), headers={**AS_USER, "x-aimesh-deadline-ms": bad})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), r.text
        assert "x-aimesh-deadline-ms must be the whole milliseconds" in r.json()["error"]


def test_the_model_service_refuses_a_request_whose_deadline_passed_without_running_it(
    services: dict[str, Service],
) -> None:
    url = f"{services['echo'].http}/v2/models/echo/infer"
    # x = -1 fails the model (500) if it runs: a 504 says it never did.
    r = httpx.post(url, json=_echo(-1.0), headers={**AS_USER, "x-aimesh-deadline-ms": "0"})
    assert (r.status_code, r.json()["code"]) == (504, "deadline_exceeded"), r.text
    assert "not run" in r.json()["error"]
    assert httpx.post(url, json=_echo(-1.0), headers=AS_USER).status_code == 500
    r = httpx.post(url, json=_echo(0.0), headers={**AS_USER, "x-aimesh-deadline-ms": "x"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), r.text


# -- aggregation ------------------------------------------------------------------------------


def test_aggregate_fans_out_and_reports_failures_beside_successes(
    home: Home, services: dict[str, Service], gateway: Service
) -> None:
    body = _body(home.x[:4])
    r = httpx.post(
        f"{gateway.http}/v2/aggregate",
        json={"models": ["fraud@1", "fraud@2", "echo", "nope", "ghost"], **body},
        headers=AS_USER,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["complete"] is False
    results = answer["results"]
    for ref, service in (("fraud@1", "fraud1a"), ("fraud@2", "fraud2")):
        direct = httpx.post(
            f"{services[service].http}/v2/models/fraud/infer", json=body, headers=AS_USER
        ).json()
        assert results[ref] == direct
    assert (results["echo"]["status"], results["echo"]["code"]) == (400, "input_mismatch")
    assert (results["nope"]["status"], results["nope"]["code"]) == (404, "model_not_found")
    assert (results["ghost"]["status"], results["ghost"]["code"]) == (503, "no_instance")
    whole = httpx.post(
        f"{gateway.http}/v2/aggregate", json={"models": ["fraud@1"], **body}, headers=AS_USER
    )
    assert whole.json()["complete"] is True


@pytest.mark.parametrize(
    "junk",
    [b"", b"{", b"[]", b'{"models": [], "inputs": []}', b'{"models": ["a/b"], "inputs": []}'],
)
def test_a_malformed_aggregate_is_400(gateway: Service, junk: bytes) -> None:
    r = httpx.post(f"{gateway.http}/v2/aggregate", content=junk, headers=AS_USER)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), r.text


# -- the registry and other services behind /api ---------------------------------------------


def test_the_registry_api_is_proxied_with_its_errors(gateway: Service) -> None:
    models = httpx.get(f"{gateway.http}/api/registry/models", headers=AS_ADMIN)
    assert {"fraud", "churn", "echo"} <= {m["name"] for m in models.json()}
    missing = httpx.get(f"{gateway.http}/api/registry/models/nope", headers=AS_ADMIN)
    assert (missing.status_code, missing.json()["code"]) == (404, "model_not_found")
    artifact = httpx.get(
        f"{gateway.http}/api/registry/models/fraud/versions/2/artifact", headers=AS_ADMIN
    )  # streamed through, in the registry's chunks
    assert artifact.status_code == 200 and len(artifact.content) > 10_000
    assert hashlib.sha256(artifact.content).hexdigest() == artifact.headers["x-aimesh-sha256"]
    unknown = httpx.get(f"{gateway.http}/api/no-such-service/x", headers=AS_ADMIN)
    assert (unknown.status_code, unknown.json()["code"]) == (503, "no_instance")


def test_the_registry_client_works_through_a_gateway_with_its_key(
    home: Home, gateway: Service, tmp_path: Path
) -> None:
    def through(home_dir: Path = home.settings.home_dir, **registry: str) -> Registry:
        settings = home.settings.model_copy(
            update={"registry": RegistrySettings(url=gateway.http, **registry), "home": home_dir}
        )
        return open_registry(settings)

    with contextlib.closing(through(api_key=ADMIN)) as client:
        assert "fraud" in {m.name for m in client.list_models()}
    with contextlib.closing(through()) as client:  # this home's service credential
        assert "fraud" in {m.name for m in client.list_models()}
    with contextlib.closing(through(tmp_path / "elsewhere")) as client, pytest.raises(Unauthorized):
        client.list_models()  # another home's credential is no key here
    with contextlib.closing(through(api_key=USER)) as client, pytest.raises(Forbidden):
        client.list_models()  # an infer-only key


class _EchoHeaders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_other_services_are_found_in_discovery_and_get_trace_headers(
    gateway: Service, nats_url: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _EchoHeaders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        _announce(nats_url, "echo-svc", f"http://127.0.0.1:{port}")
        url = f"{gateway.http}/api/echo-svc/things?x=1"
        assert wait_for(lambda: httpx.get(url, headers=AS_ADMIN).status_code == 200)
        sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        seen = httpx.get(
            url, headers={**AS_ADMIN, "traceparent": sent, "x-request-id": "abc"}
        ).json()
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"] == "/api/echo-svc/things?x=1"
        assert headers["traceparent"] == sent and headers["x-request-id"] == "abc"
        assert headers["x-api-key"] == ADMIN  # every service checks the caller's key again
        fresh = httpx.get(url, headers=AS_ADMIN)
        made = {k.lower(): v for k, v in fresh.json()["headers"].items()}
        request_id = fresh.headers["x-request-id"]
        assert made["x-request-id"] == request_id
        assert made["traceparent"].startswith(f"00-{request_id}-")  # one id for logs and traces
    finally:
        server.shutdown()


def _announce(
    nats_url: str,
    name: str,
    rest_url: str,
    *,
    kind: str = "pipeline",
    apis: tuple[str, ...] = (),
    withdraw: bool = False,
) -> None:
    """Put (or with ``withdraw``, remove) a discovery entry, as a running service keeps one."""

    async def main() -> None:
        now = datetime.now(UTC)
        instance = ServiceInstance(
            id="t1", kind=kind, name=name, rest_url=rest_url, started=now, heartbeat=now,  # type: ignore[arg-type]
            apis=apis,
        )  # fmt: skip
        async with await connect(nats_url, timeout=2, name="test") as bus:
            kv = await discovery_bucket(bus)
            if withdraw:
                await kv.purge(instance.key)
            else:
                await kv.put(instance.key, msgspec.json.encode(instance))

    asyncio.run(main())


def test_a_record_kinds_routes_go_to_the_registry_that_announced_them(
    gateway: Service, nats_url: str, tmp_path: Path
) -> None:
    """A registry whose code defines a kind (here one only this test defines) names its
    plural in discovery; the gateway routes /api/<plural> there, documents it, and the
    registry client works through it."""
    config = Settings(home=tmp_path / "kinds", auth={"keys": KEYS})
    with kinds_registered():
        app = create_app(config, publish_events=False)
        with served(app) as url:
            app.state.registry.store.create_model(ModelCreate(name="fraud"), "t")
            _announce(nats_url, "registry-kinds", url, kind="registry", apis=WIDGET_APIS)
            try:
                listing = f"{gateway.http}/api/widgets"
                assert wait_for(lambda: httpx.get(listing, headers=AS_ADMIN).status_code == 200)
                one = f"{listing}/w1"
                made = httpx.put(one, json={"model": "fraud"}, headers=AS_ADMIN)
                assert (made.status_code, made.headers["etag"]) == (201, '"1"'), made.text
                stale = httpx.put(
                    one, json={"model": "fraud"}, headers={**AS_ADMIN, "If-Match": '"7"'}
                )
                assert (stale.status_code, stale.json()["code"]) == (409, "record_conflict")
                assert httpx.put(one, json={"model": "fraud"}, headers=AS_USER).status_code == 403
                reg = RegistryClient(
                    gateway.http, timeout=30, cache_dir=tmp_path / "cache", api_key=ADMIN
                )
                with contextlib.closing(reg):
                    assert reg.get_record(WIDGET, "w1").revision == 1
                    spec = WidgetSpec(model="fraud", weight=2.0)
                    assert reg.replace_record(WIDGET, "w1", spec, revision=1).revision == 2
                    assert [h.revision for h in reg.record_history(WIDGET, "w1")] == [2, 1]
                paths = httpx.get(f"{gateway.http}/openapi.json").json()["paths"]
                assert {"/api/widgets", "/api/widgets/{name}", "/api/gadgets/{name}"} <= set(paths)
                put = paths["/api/widgets/{name}"]["put"]
                assert {"502", "503", "504"} <= set(put["responses"]) and put["security"]
            finally:
                _announce(nats_url, "registry-kinds", url, kind="registry", withdraw=True)
    gone = f"{gateway.http}/api/widgets"
    assert wait_for(lambda: httpx.get(gone, headers=AS_ADMIN).status_code == 503)


# -- OpenAPI, metrics, life cycle -------------------------------------------------------------


def test_one_openapi_document_covers_the_gateway_and_the_registry(gateway: Service) -> None:
    paths = httpx.get(f"{gateway.http}/openapi.json").json()["paths"]
    assert {"/v2/models/{name}/infer", "/v2/aggregate", "/api/registry/models"} <= set(paths)
    assert not any(p == "/health" and "registry" in str(v) for p, v in paths.items())


def test_metrics_count_requests_by_route_upstream_and_status(
    home: Home, services: dict[str, Service], gateway: Service
) -> None:
    labels = {"route": "infer", "upstream": services["fraud2"].http.removeprefix("http://")}
    before = _metric(gateway, "aimesh_gateway_requests_total", status="200", **labels)
    r = httpx.post(
        f"{gateway.http}/v2/models/fraud/versions/2/infer", json=_body(home.x[:1]), headers=AS_USER
    )
    assert r.status_code == 200, r.text
    after = _metric(gateway, "aimesh_gateway_requests_total", status="200", **labels)
    assert after == before + 1
    assert _metric(gateway, "aimesh_gateway_request_seconds_count", route="infer") > 0


def test_without_a_bus_the_gateway_is_live_but_not_ready(home: Home) -> None:
    unreachable = home.with_env(AIMESH_BUS__URL=f"nats://127.0.0.1:{free_port()}")
    port = free_port()
    log = home.settings.home_dir / f"gateway-nobus-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aimesh", "gateway", "serve", "--port", str(port),
         "--grpc-port", str(free_port())],
        env=unreachable.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _status(f"{url}/v2/health/live") == 200), log.read_text()
        assert _status(f"{url}/health") == 503
        assert _status(f"{url}/v2/health/ready") == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


def test_a_gateway_that_lost_its_bus_still_stops_cleanly(
    home: Home, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own = EmbeddedNats(tmp_path_factory.mktemp("own-nats"), start_timeout=30)
    own.start()
    try:
        gateway = home.with_env(AIMESH_BUS__URL=own.url).gateway()
    finally:
        own.stop()  # the bus goes away under a running gateway
    started = time.monotonic()
    assert gateway.stop() == 0, gateway.log.read_text()
    assert time.monotonic() - started < 10
    assert "Traceback" not in gateway.log.read_text()


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.TransportError:
        return None


def test_hash_key_prints_the_digest_to_configure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aimesh", "keys", "hash", "s3cret"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(b"s3cret").hexdigest()


def test_sigterm_lets_requests_in_flight_finish(home: Home, services: dict[str, Service]) -> None:
    second = home.gateway()
    slow = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.5]}]}
    results: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: results.append(
            httpx.post(
                f"{second.http}/v2/models/echo/infer", json=slow, headers=AS_USER, timeout=30
            )
        )
    )
    caller.start()
    time.sleep(0.5)  # the request is inside the model now
    assert second.stop() == 0
    caller.join()
    assert results[0].status_code == 200 and results[0].json()["outputs"][0]["data"] == [3.0]
    assert "gateway stopped" in second.log.read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{second.http}/health", timeout=2)

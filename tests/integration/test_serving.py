"""A real model service process on free ports: REST, gRPC, tritonclient, batching, hot swap,
discovery, limits and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from _services import ECHO_MODEL, WAIT_S, Home, Service
from _services import free_port as _free_port

from aimesh import runtimes
from aimesh.bus import connect
from aimesh.bus.discovery import ServiceInstance, list_instances
from aimesh.config import Settings
from aimesh.registry import LocalRegistry, push_model


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    fraud_data: tuple[np.ndarray, np.ndarray],
) -> Home:
    root = tmp_path_factory.mktemp("serving")
    return Home.with_fraud(root, nats_url, fraud_data)


@pytest.fixture(scope="module")
def service(home: Home) -> Iterator[Service]:
    running = home.serve("fraud@1")
    yield running
    assert running.stop() == 0


def _runtime(home: Home, ref: str) -> runtimes.Runtime:
    registry = home.registry()
    version = registry.get_version("fraud", ref)
    path = registry.fetch_artifact(version)
    registry.close()
    return runtimes.load_runtime(version.framework, path)


def _body(x: np.ndarray, **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP64",
                "data": x.ravel().tolist(),
            }
        ],
        **extra,
    }


def test_rest_predictions_equal_the_runtime(home: Home, service: Service) -> None:
    x = home.x[:16]
    expected = _runtime(home, "1").predict({"input-0": x})
    r = httpx.post(f"{service.http}/v2/models/fraud/infer", json=_body(x, id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "fraud" and body["model_version"] == "1" and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == expected["label"].tolist()
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(16, 2), expected["probabilities"]
    )
    assert r.headers["x-request-id"]


def test_metadata_health_and_requested_outputs(service: Service) -> None:
    assert httpx.get(f"{service.http}/v2/health/live").status_code == 200
    meta = httpx.get(f"{service.http}/v2/models/fraud").json()
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 30]
    assert httpx.get(f"{service.http}/v2/models/fraud/versions/1/ready").status_code == 200
    assert "binary_tensor_data" in httpx.get(f"{service.http}/v2").json()["extensions"]
    r = httpx.post(
        f"{service.http}/v2/models/fraud/versions/1/infer",
        json=_body(np.zeros((1, 30)), outputs=[{"name": "probabilities"}]),
    )
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]


def _inp(
    name: str = "input-0", shape: tuple[int, int] = (1, 30), dtype: str = "FP64", n: int = 30
) -> dict[str, object]:
    return {"name": name, "shape": list(shape), "datatype": dtype, "data": [0] * n}


INFER = "/v2/models/fraud/infer"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (INFER, {"inputs": [_inp(name="nope")]}, 400, "input_mismatch"),
        (INFER, {"inputs": [_inp(shape=(1, 29), n=29)]}, 400, "shape_mismatch"),
        (INFER, {"inputs": [_inp(dtype="FP32")]}, 400, "datatype_mismatch"),
        (INFER, {"inputs": [_inp(n=29)]}, 400, "invalid_request"),
        (INFER, {"inputs": []}, 400, "input_mismatch"),
        (INFER, {"inputs": [_inp()], "outputs": [{"name": "x"}]}, 400, "input_mismatch"),
        ("/v2/models/other/infer", {"inputs": [_inp()]}, 404, "model_not_found"),
        ("/v2/models/fraud/versions/7/infer", {"inputs": [_inp()]}, 404, "version_not_found"),
        ("/v2/nothing", {}, 404, "route_not_found"),
    ],
)
def test_bad_requests_are_4xx_with_the_protocol_error_body(
    service: Service, path: str, body: object, status: int, code: str
) -> None:
    r = httpx.post(service.http + path, json=body)
    assert (r.status_code, r.json().get("code")) == (status, code), r.text
    assert r.json()["error"]


@pytest.mark.parametrize("junk", [b"", b"{", b"[]", b'{"inputs": 5}', b"\xff" * 10, b"null"])
def test_malformed_bodies_are_400(service: Service, junk: bytes) -> None:
    r = httpx.post(f"{service.http}/v2/models/fraud/infer", content=junk)
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_oversized_body_is_413(home: Home) -> None:
    small = home.serve("fraud@1", "--workers", "1")
    try:
        big = b"{" + b" " * (70 * 1024 * 1024) + b"}"
        r = httpx.post(f"{small.http}/v2/models/fraud/infer", content=big, timeout=30)
        assert (r.status_code, r.json()["code"]) == (413, "request_too_large")
    finally:
        small.stop()


def test_tritonclient_http_and_grpc_work_unchanged(home: Home, service: Service) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = home.x[:8]
    expected = _runtime(home, "1").predict({"input-0": x})
    http = httpclient.InferenceServerClient(service.http.removeprefix("http://"))
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("fraud")
    assert http.get_model_metadata("fraud")["versions"] == ["1"]
    for binary in (False, True):
        inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        result = http.infer("fraud", [inp], outputs=out)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"])
    http.close()

    grpc = grpcclient.InferenceServerClient(service.grpc)
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready("fraud")
    assert grpc.get_model_metadata("fraud").versions == ["1"]
    inp = grpcclient.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    result = grpc.infer("fraud", [inp])
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"])
    assert result.get_response().model_version == "1"
    bad = grpcclient.InferInput("input-0", [1, 29], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 29)))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="shape"):
        grpc.infer("fraud", [bad])
    grpc.close()


def test_concurrent_requests_are_batched_and_answer_like_single_calls(
    home: Home, service: Service
) -> None:
    expected = _runtime(home, "1").predict({"input-0": home.x[:200]})["probabilities"]

    async def main() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=service.http, timeout=30) as client:

            async def one(i: int) -> list[float]:
                r = await client.post("/v2/models/fraud/infer", json=_body(home.x[i : i + 1]))
                assert r.status_code == 200, r.text
                return r.json()["outputs"][1]["data"]

            return await asyncio.gather(*(one(i) for i in range(200)))

    answers = asyncio.run(main())
    np.testing.assert_allclose(np.array(answers), expected)
    metrics = httpx.get(f"{service.http}/metrics").text
    sizes = [
        line for line in metrics.splitlines() if line.startswith("aimesh_batch_size_requests_sum")
    ]
    counts = [
        line for line in metrics.splitlines() if line.startswith("aimesh_batch_size_requests_count")
    ]
    assert sizes and counts
    assert float(sizes[0].split()[-1]) > float(counts[0].split()[-1])  # more requests than calls
    assert (
        'aimesh_inference_requests_total{model="fraud",protocol="rest",status="ok",version="1"}'
        in metrics
    )


def test_alias_move_under_load_fails_no_request_and_switches_version(home: Home) -> None:
    registry = home.registry()
    registry.set_alias("fraud", "champion", 1)
    home.publish(registry)
    swapping = home.serve("fraud@champion")
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    body = _body(home.x[:2])

    def load() -> None:
        with httpx.Client(base_url=swapping.http, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/v2/models/fraud/infer", json=body)
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=load) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT_S
        while len(versions) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        registry.set_alias("fraud", "champion", 2)
        home.publish(registry)
        while (not versions or versions[-1] != "2") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        registry.set_alias("fraud", "champion", 1)
        home.publish(registry)
        registry.close()
        swapping.stop()
    assert failures == []
    assert versions[0] == "1" and versions[-1] == "2"
    first_new = versions.index("2")
    # Requests that started before the switch may finish on 1 a moment after it; then only 2.
    assert "1" not in versions[first_new + 32 :]


def test_a_rollback_switches_a_service_following_the_alias_back(home: Home) -> None:
    registry = home.registry()
    registry.set_alias("fraud", "champion", 1)
    registry.set_alias("fraud", "champion", 2)
    home.publish(registry)
    following = home.serve("fraud@champion")
    body = _body(home.x[:2])

    def serves(version: str) -> bool:
        r = httpx.post(f"{following.http}/v2/models/fraud/infer", json=body)
        return r.status_code == 200 and r.json()["model_version"] == version

    try:
        assert _wait_for(lambda: serves("2"))
        back = registry.rollback_alias("fraud", "champion")
        home.publish(registry)
        assert (back.version, back.previous) == (1, 2)
        assert _wait_for(lambda: serves("1"))
        ready = httpx.get(f"{following.http}/v2/models/fraud/versions/1/ready")
        assert ready.status_code == 200
    finally:
        registry.set_alias("fraud", "champion", 1)
        home.publish(registry)
        registry.close()
        following.stop()


def _instances(nats_url: str) -> list[ServiceInstance]:
    async def main() -> list[ServiceInstance]:
        async with await connect(nats_url, timeout=2, name="test") as bus:
            return await list_instances(bus, "model")

    return asyncio.run(main())


def _wait_for(predicate: object, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_discovery_entry_lives_while_serving_and_goes_with_the_process(
    home: Home, nats_url: str
) -> None:
    graceful = home.serve("fraud@1")
    mine = lambda: [i for i in _instances(nats_url) if i.rest_url == graceful.http]  # noqa: E731
    assert _wait_for(lambda: mine())
    entry = mine()[0]
    assert (entry.model, entry.version, entry.workers) == ("fraud", "1", 1)
    assert entry.grpc_address == graceful.grpc
    assert graceful.stop() == 0
    assert mine() == []  # removed on shutdown, not left to expire

    crashed = home.serve("fraud@1")
    gone = lambda: [i for i in _instances(nats_url) if i.rest_url == crashed.http]  # noqa: E731
    assert _wait_for(lambda: gone())
    crashed.stop(signal.SIGKILL)
    assert _wait_for(lambda: not gone(), timeout=15)  # expired by the bucket's TTL


def test_workers_share_the_ports(home: Home, nats_url: str) -> None:
    pooled = home.serve("fraud@1", "--workers", "2")
    try:
        with httpx.Client(base_url=pooled.http) as client:
            for _ in range(20):
                assert (
                    client.post("/v2/models/fraud/infer", json=_body(home.x[:1])).status_code == 200
                )
        entries = [i for i in _instances(nats_url) if i.rest_url == pooled.http]
        assert _wait_for(lambda: [i for i in _instances(nats_url) if i.rest_url == pooled.http])
        entries = [i for i in _instances(nats_url) if i.rest_url == pooled.http]
        assert entries[0].workers == 2
        metrics = httpx.get(f"{pooled.http}/metrics").text
        ok = [
            line
            for line in metrics.splitlines()
            if line.startswith("aimesh_inference_requests_total") and 'status="ok"' in line
        ]
        assert sum(float(line.split()[-1]) for line in ok) == 20  # summed over both workers
    finally:
        assert pooled.stop() == 0


def test_stand_alone_without_a_bus_still_serves(home: Home) -> None:
    env = {**home.env, "AIMESH_BUS__URL": f"nats://127.0.0.1:{_free_port()}"}
    alone = Home(home.settings, env, home.x).serve("fraud@1")
    try:
        r = httpx.post(f"{alone.http}/v2/models/fraud/infer", json=_body(home.x[:1]))
        assert r.status_code == 200
    finally:
        alone.stop()
    assert alone.log.read_text().count("stand-alone") == 1


@pytest.fixture(scope="module")
def slow_model(home: Home, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("slow") / "slow.py"
    path.write_text(ECHO_MODEL)
    registry = home.registry(allow_code_artifacts=True)
    push_model(registry, "slow", path, trusted=True)
    registry.close()
    return "slow@1"


def _sleep_body(seconds: float) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [seconds]}]}


def test_sigterm_drains_requests_in_flight(home: Home, slow_model: str) -> None:
    service = home.serve(slow_model)
    results: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{service.http}/v2/models/slow/infer", json=_sleep_body(1.5), timeout=30)
        )
    )
    caller.start()
    time.sleep(0.5)  # the request is inside the model now
    assert service.stop() == 0
    caller.join()
    assert results[0].status_code == 200
    assert results[0].json()["outputs"][0]["data"] == [3.0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.http}/v2/health/live", timeout=2)


def test_requests_over_the_concurrency_limit_get_503_with_retry_after(
    home: Home, slow_model: str
) -> None:
    limited = Home(home.settings, {**home.env, "AIMESH_SERVING__MAX_CONCURRENCY": "1"}, home.x)
    service = limited.serve(slow_model)
    try:
        first = threading.Thread(
            target=httpx.post,
            args=(f"{service.http}/v2/models/slow/infer",),
            kwargs={"json": _sleep_body(1.0), "timeout": 30},
        )
        first.start()
        time.sleep(0.3)
        r = httpx.post(f"{service.http}/v2/models/slow/infer", json=_sleep_body(0.0))
        assert (r.status_code, r.json()["code"]) == (503, "overloaded")
        assert r.headers["retry-after"] == "1"

        first.join()
    finally:
        service.stop()


def test_two_terminals_share_the_embedded_bus_of_their_home(
    tmp_path: Path, fraud_skops: Path, home: Home
) -> None:
    # No bus configured anywhere: `aimesh serve` starts the home's embedded bus, and
    # `aimesh models alias` in another process finds it and moves the alias live.
    settings = Settings(home=tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env["AIMESH_HOME"] = str(settings.home_dir)
    registry = LocalRegistry.from_settings(settings)
    push_model(registry, "fraud", fraud_skops, aliases=["champion"])
    push_model(registry, "fraud", fraud_skops)
    registry.close()
    own = Home(settings, env, home.x)
    service = own.serve("fraud@champion")
    try:
        alias = subprocess.run(
            [sys.executable, "-m", "aimesh", "models", "alias", "fraud", "champion", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert alias.returncode == 0, alias.stderr

        def version() -> str:
            r = httpx.post(f"{service.http}/v2/models/fraud/infer", json=_body(home.x[:1]))
            return str(r.json()["model_version"])

        assert _wait_for(lambda: version() == "2")
    finally:
        service.stop()
        subprocess.run(
            [sys.executable, "-m", "aimesh", "bus", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )


def test_json_access_log_carries_the_request_id(home: Home) -> None:
    env = {**home.env, "AIMESH_LOG_FORMAT": "json", "AIMESH_SERVING__ACCESS_LOG": "true"}
    service = Home(home.settings, env, home.x).serve("fraud@1")
    try:
        r = httpx.post(
            f"{service.http}/v2/models/fraud/infer",
            json=_body(home.x[:1]),
            headers={"x-request-id": "trace-me-42"},
        )
        assert r.headers["x-request-id"] == "trace-me-42"
    finally:
        service.stop()
    import json

    lines = [
        json.loads(line) for line in service.log.read_text().splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line.get("request_id") == "trace-me-42"]
    assert access and access[0]["status"] == 200 and access[0]["level"] == "info"


def test_each_worker_caps_native_threads_at_one_by_default(home: Home) -> None:
    share = 1
    running = home.serve("fraud@2", "--workers", "2")
    try:
        line = re.compile(r"native threads capped at (\d+) per worker: (.*)")
        assert _wait_for(lambda: line.search(running.log.read_text()))
        reports = line.findall(running.log.read_text())
    finally:
        assert running.stop() == 0
    for cap, pools in reports:
        # threadpoolctl's view from the thread that runs the model, as it loaded
        seen = dict(pool.rsplit(" ", 1) for pool in pools.split(", "))
        assert int(cap) == share
        assert seen.get("openmp") == str(share), pools  # HistGradientBoosting's pool
        assert set(seen.values()) == {str(share)}, pools


BLOCKING_MODEL = '''
import pathlib
import time


class Model:
    """Says it started (a file), then sleeps x[0, 0] seconds."""

    signature = {
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 1]}],
    }

    def load(self) -> None:
        pass

    def predict(self, inputs):
        pathlib.Path(STARTED).touch()
        time.sleep(float(inputs["x"][0, 0]))
        return {"y": inputs["x"]}
'''


def test_a_second_ctrl_c_exits_at_once_while_draining(
    home: Home, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("blocking")
    started = folder / "started"
    path = folder / "blocking.py"
    path.write_text(f"STARTED = {str(started)!r}\n" + BLOCKING_MODEL)
    registry = home.registry(allow_code_artifacts=True)
    push_model(registry, "blocking", path, trusted=True)
    registry.close()
    service = home.with_env(AIMESH_SERVING__DRAIN_TIMEOUT_S="300").serve("blocking@1")

    def call() -> None:
        with contextlib.suppress(httpx.TransportError):  # the service dies under it
            httpx.post(
                f"{service.http}/v2/models/blocking/infer", json=_sleep_body(120), timeout=200
            )

    caller = threading.Thread(target=call)
    try:
        caller.start()
        assert _wait_for(started.exists)  # the request is inside the model
        service.proc.send_signal(signal.SIGINT)
        assert _wait_for(lambda: "stopping blocking@1" in service.log.read_text())
        assert service.proc.poll() is None  # draining: the request has minutes to go
        service.proc.send_signal(signal.SIGINT)
        assert service.proc.wait(timeout=10) == -signal.SIGINT
    finally:
        service.stop(signal.SIGKILL)
        caller.join()

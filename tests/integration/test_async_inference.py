"""Async inference end to end: gateway ``?async=true`` -> job -> worker -> model -> result.

Real processes on the session's NATS: a registry, fraud@champion and echo@1 model services,
the jobs service, an ``aimesh worker inference`` and the gateway. Everything a client does
goes through the gateway: submit, poll, follow events (SSE), fetch the result.
"""

from __future__ import annotations

import http.server
import json
import pickle
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _services import (
    ECHO_MODEL,
    Home,
    Service,
    free_port,
    push_fraud_models,
    run_aimesh,
    start,
    wait_for,
)

from aimesh.registry import push_model


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    fraud_data: tuple[np.ndarray, np.ndarray],
) -> Home:
    root = tmp_path_factory.mktemp("async")
    x, y = fraud_data
    h = Home.create(
        root,
        nats_url,
        x,
        AIMESH_JOBS__BACKOFF_S="0.05",
        AIMESH_JOBS__PROGRESS_INTERVAL_S="0.1",
        # The test's webhook receiver listens on loopback: the operator allows it.
        AIMESH_JOBS__WEBHOOK_ALLOW='["127.0.0.1"]',
    )
    registry = h.registry(allow_code_artifacts=True)
    push_fraud_models(registry, root, x, y)
    echo = root / "echo.py"
    echo.write_text(ECHO_MODEL)
    push_model(registry, "echo", echo, trusted=True)
    h.publish(registry)
    registry.close()
    return h


@pytest.fixture(scope="module")
def stack(home: Home) -> Iterator[dict[str, str]]:
    """The stack; yields the URLs of the gateway and the worker's health route."""
    running: list[Service] = []
    try:
        running.append(home.registry_service())
        running.append(home.serve("fraud@champion"))
        running.append(home.serve("echo@1"))
        port = free_port()
        running.append(
            start(
                ["jobs", "serve", "--port", str(port)],
                env=home.env,
                log=home.settings.home_dir / "jobs.log",
                http=f"http://127.0.0.1:{port}",
                ready_path="/health",
            )
        )
        port = free_port()
        worker = start(
            ["worker", "inference", "--concurrency", "4", "--port", str(port)],
            env=home.env,
            log=home.settings.home_dir / "worker.log",
            http=f"http://127.0.0.1:{port}",
            ready_path="/health",
        )
        running.append(worker)
        gw = home.gateway()
        running.append(gw)
        assert wait_for(lambda: httpx.get(f"{gw.http}/api/jobs").status_code == 200)
        yield {"gateway": gw.http, "worker": worker.http}
    finally:
        for service in reversed(running):
            service.stop()


@pytest.fixture(scope="module")
def gateway(stack: dict[str, str]) -> str:
    return stack["gateway"]


def _fraud_body(x: np.ndarray) -> dict[str, Any]:
    return {
        "id": "r-1",
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP64",
                "data": x.ravel().tolist(),
            }
        ],
    }


def _echo_body(seconds: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [seconds]}]}


def _until_done(gateway: str, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(httpx.get(f"{gateway}/api/jobs/{job_id}").json())
        return found["state"] in ("succeeded", "failed", "cancelled")

    assert wait_for(done), found
    return found


def test_an_async_call_answers_202_and_its_result_equals_the_sync_answer(
    home: Home, gateway: str
) -> None:
    body = _fraud_body(home.x[:5])
    url = f"{gateway}/v2/models/fraud/versions/champion/infer"
    accepted = httpx.post(url, params={"async": "true"}, json=body)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert (job["kind"], job["state"]) == ("inference", "queued")
    assert accepted.headers["location"] == f"/api/jobs/{job['id']}"
    assert "preference-applied" not in accepted.headers

    done = _until_done(gateway, job["id"])
    assert done["state"] == "succeeded", done
    assert done["result_ref"] == f"/api/jobs/{job['id']}/result"
    assert done["result"]["status"] == 200
    result = httpx.get(f"{gateway}{done['result_ref']}")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    direct = httpx.post(url, json=body)
    assert result.json() == direct.json()


def test_prefer_respond_async_and_an_idempotency_key(home: Home, gateway: str) -> None:
    headers = {"Prefer": "respond-async, wait=0", "Idempotency-Key": f"k-{time.time_ns()}"}
    url = f"{gateway}/v2/models/fraud/infer"
    first = httpx.post(url, json=_fraud_body(home.x[:1]), headers=headers)
    again = httpx.post(url, json=_fraud_body(home.x[:1]), headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.headers["preference-applied"] == "respond-async"
    assert first.json()["id"] == again.json()["id"]
    # The same key with another request is refused, not answered with the first job.
    other = httpx.post(url, json=_fraud_body(home.x[1:2]), headers=headers)
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    assert _until_done(gateway, first.json()["id"])["state"] == "succeeded"


def _binary_request(
    name: str, x: np.ndarray, output: str, *, binary_output: bool
) -> tuple[bytes, dict[str, str]]:
    """A request body with ``x`` as binary tensor data, as tritonclient encodes it."""
    tensor = triton.InferInput(name, list(x.shape), "FP64")
    tensor.set_data_from_numpy(x, binary_data=True)
    outputs = [triton.InferRequestedOutput(output, binary_data=binary_output)]
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(json_size),
    }
    return body, headers


def test_binary_tensors_round_trip_as_tritonclient_encodes_them(home: Home, gateway: str) -> None:
    x = home.x[:3].astype(np.float64)
    body, headers = _binary_request("input-0", x, "label", binary_output=True)
    url = f"{gateway}/v2/models/fraud/infer"
    accepted = httpx.post(url + "?async=1", content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert _until_done(gateway, accepted.json()["id"])["state"] == "succeeded"
    result = httpx.get(f"{gateway}/api/jobs/{accepted.json()['id']}/result")
    length = result.headers.get("inference-header-content-length")
    assert length is not None
    parsed = triton.InferenceServerClient.parse_response_body(
        result.content, header_length=int(length)
    )
    direct = httpx.post(url, content=body, headers=headers)
    expected = triton.InferenceServerClient.parse_response_body(
        direct.content, header_length=int(direct.headers["inference-header-content-length"])
    )
    np.testing.assert_array_equal(parsed.as_numpy("label"), expected.as_numpy("label"))


def test_bad_input_is_refused_at_once_as_the_sync_call_refuses_it(gateway: str) -> None:
    before = len(httpx.get(f"{gateway}/api/jobs", params={"kind": "inference"}).json())
    x = {"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [0.0]}
    json_bodies = [
        {"inputs": [{**x, "shape": [1, 3], "data": [1, 2, 3]}]},  # shape_mismatch
        {"inputs": [{**x, "name": "z"}]},  # input_mismatch
        {"inputs": [{**x, "datatype": "INT64", "data": [0]}]},  # datatype_mismatch
        {"inputs": [{**x, "shape": [10**8, 1]}]},  # 10**8 rows said, one sent
    ]
    bodies = [json.dumps(body).encode() for body in json_bodies]
    bodies.append(pickle.dumps({"inputs": [x]}))  # not JSON at all
    url = f"{gateway}/v2/models/echo/infer"
    for body in bodies:
        headers = {"content-type": "application/json"}
        direct = httpx.post(url, content=body, headers=headers)
        deferred = httpx.post(url, params={"async": "true"}, content=body, headers=headers)
        assert 400 <= direct.status_code < 500, direct.text
        assert (deferred.status_code, deferred.json()["code"]) == (
            direct.status_code,
            direct.json()["code"],
        ), body[:80]
    after = len(httpx.get(f"{gateway}/api/jobs", params={"kind": "inference"}).json())
    assert after == before  # nothing was queued


def test_what_cannot_be_queued_is_refused_at_once(gateway: str) -> None:
    before = len(httpx.get(f"{gateway}/api/jobs", params={"kind": "inference"}).json())
    unknown = httpx.post(f"{gateway}/v2/models/nope/infer?async=true", json=_echo_body(0))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "model_not_found")
    maybe = httpx.post(f"{gateway}/v2/models/echo/infer?async=maybe", json=_echo_body(0))
    assert (maybe.status_code, maybe.json()["code"]) == (400, "invalid_request")
    hook = httpx.post(f"{gateway}/v2/models/echo/infer?webhook=http://x/", json=_echo_body(0))
    assert (hook.status_code, hook.json()["code"]) == (400, "invalid_request")
    # 127.0.0.1 is allowed here (the webhook test's receiver); no other internal address is.
    for url in ("ftp://x/", "http://127.0.0.2:8200/", "http://169.254.169.254/", "http://[::1]/"):
        bad_hook = httpx.post(
            f"{gateway}/v2/models/echo/infer",
            params={"async": "true", "webhook": url},
            json=_echo_body(0),
        )
        assert (bad_hook.status_code, bad_hook.json()["code"]) == (400, "url_refused"), url
    after = len(httpx.get(f"{gateway}/api/jobs", params={"kind": "inference"}).json())
    assert after == before


def test_events_stream_through_the_gateway_as_they_happen(gateway: str) -> None:
    accepted = httpx.post(f"{gateway}/v2/models/echo/infer?async=true", json=_echo_body(3.0))
    job_id = accepted.json()["id"]
    pending = httpx.get(f"{gateway}/api/jobs/{job_id}/result")
    assert (pending.status_code, pending.json()["code"]) == (409, "job_pending")
    seen: list[tuple[str, str]] = []  # (event, the job's state when the event arrived)
    with httpx.stream("GET", f"{gateway}/api/jobs/{job_id}/events", timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                state = httpx.get(f"{gateway}/api/jobs/{job_id}").json()["state"]
                seen.append((line[7:], state))
    # The first event reached the client while the model was still working: streamed,
    # not buffered until the end.
    assert seen[0][1] in ("queued", "running"), seen
    assert seen[-1][0] == "succeeded"
    result = httpx.get(f"{gateway}/api/jobs/{job_id}/result").json()
    assert result["outputs"][0]["data"] == [6.0]


class _Receiver(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_webhook_hears_when_the_job_ends(gateway: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{server.server_address[1]}/done"
        accepted = httpx.post(
            f"{gateway}/v2/models/echo/infer", params={"async": "true", "webhook": hook},
            json=_echo_body(0),
        )  # fmt: skip
        job_id = accepted.json()["id"]
        assert wait_for(lambda: any(c["id"] == job_id for c in _Receiver.calls))
        call = next(c for c in _Receiver.calls if c["id"] == job_id)
        assert call["state"] == "succeeded"
    finally:
        server.shutdown()
        server.server_close()


def test_the_worker_says_it_is_healthy_and_counts_its_jobs(
    stack: dict[str, str], gateway: str
) -> None:
    health = httpx.get(f"{stack['worker']}/health").json()
    assert (health["status"], health["kind"]) == ("ok", "inference")
    posted = httpx.post(f"{stack['worker']}/health")
    assert (posted.status_code, posted.json()["code"]) == (405, "method_not_allowed")
    nowhere = httpx.get(f"{stack['worker']}/nowhere")
    assert (nowhere.status_code, nowhere.json()["code"]) == (404, "route_not_found")

    def succeeded() -> float:
        for line in httpx.get(f"{stack['worker']}/metrics").text.splitlines():
            if line.startswith("aimesh_worker_jobs_total{") and 'outcome="succeeded"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = succeeded()
    job = httpx.post(f"{gateway}/v2/models/echo/infer?async=true", json=_echo_body(0)).json()
    assert _until_done(gateway, job["id"])["state"] == "succeeded"
    assert wait_for(lambda: succeeded() == before + 1)
    assert "aimesh_worker_running" in httpx.get(f"{stack['worker']}/metrics").text
    # The worker's REST address is for health, not an API the gateway proxies.
    assert httpx.get(f"{gateway}/api/inference/health").json()["code"] == "no_instance"


def test_the_gateways_openapi_covers_async_calls_and_every_service(gateway: str) -> None:
    def document() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{gateway}/openapi.json").json()
        return found

    assert wait_for(lambda: "/api/jobs/{job_id}/result" in document()["paths"])
    paths = document()["paths"]
    assert {"/api/registry/models", "/api/jobs", "/api/jobs/{job_id}/events"} <= set(paths)
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "202" in infer["responses"]
    assert {p["name"] for p in infer["parameters"]} >= {"async", "webhook", "Idempotency-Key"}
    assert "Job" in document()["components"]["schemas"]


def test_the_cli_fetches_a_result_or_says_why_not(home: Home, gateway: str, tmp_path: Path) -> None:
    def aimesh(*args: str) -> subprocess.CompletedProcess[str]:
        return run_aimesh(home.env, "jobs", *args, ok=False, timeout=60)

    # The model answers after 8 s: longer than the CLI takes to start, even on a busy machine.
    slow = httpx.post(f"{gateway}/v2/models/echo/infer?async=true", json=_echo_body(8.0)).json()
    pending = aimesh("result", slow["id"])
    assert pending.returncode == 1 and "job_pending" in pending.stderr
    assert _until_done(gateway, slow["id"])["state"] == "succeeded"
    shown = aimesh("result", slow["id"])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["outputs"][0]["data"] == [16.0]
    out = tmp_path / "answer.json"
    wrote = aimesh("result", slow["id"], "--output", str(out))
    assert wrote.returncode == 0 and json.loads(out.read_bytes())["outputs"][0]["data"] == [16.0]


def test_an_answer_too_large_for_the_bus_fails_its_job_clearly(gateway: str) -> None:
    # 100,000 rows in binary (800 KB in) answered as JSON (about 2 MB out): over the bus's
    # 1 MiB message limit, so it cannot be kept as a result.
    x = np.full((100_000, 1), 1.2345678901234567e-3)
    x[0, 0] = 0.0  # the echo model sleeps x[0, 0] seconds
    body, headers = _binary_request("x", x, "y", binary_output=False)
    accepted = httpx.post(
        f"{gateway}/v2/models/echo/infer?async=true", content=body, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    done = _until_done(gateway, accepted.json()["id"])
    assert (done["state"], done["error"]["code"], done["attempts"]) == ("failed", "job_rejected", 1)
    assert "larger than a result the bus carries" in done["error"]["message"]

"""Webhook calls: the HMAC signature a receiver checks, retries, giving up, and refusing
URLs that reach inside. A real receiver on 127.0.0.1 records what it gets; every assertion
runs in the test itself, after the sender has finished."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import ClassVar

import msgspec
import pytest

from aimesh.jobs import SIGNATURE_HEADER, Job, sign, verify_signature
from aimesh.jobs.webhooks import WebhookSender
from aimesh.outbound import OutboundPolicy

JOB = Job(
    id="b" * 32,
    kind="noop",
    state="succeeded",
    max_attempts=3,
    attempts=1,
    created=datetime(2026, 1, 1, tzinfo=UTC),
    finished=datetime(2026, 1, 1, tzinfo=UTC),
)


def test_signature_is_the_hmac_sha256_of_the_body() -> None:
    # Checked against: printf '{"a":1}' | openssl dgst -sha256 -hmac s3cret
    assert sign(b'{"a":1}', "s3cret") == (
        "sha256=5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d"
    )
    signature = sign(b"body", "s3cret")
    assert verify_signature(b"body", signature, "s3cret")
    assert not verify_signature(b"body!", signature, "s3cret")
    assert not verify_signature(b"body", signature, "other")
    assert not verify_signature(b"body", None, "s3cret")


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers each path with its next scripted status (204 when unscripted); records calls."""

    calls: ClassVar[list[tuple[str, bytes, dict[str, str]]]] = []
    script: ClassVar[dict[str, list[int]]] = {}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((self.path, body, dict(self.headers)))
        statuses = type(self).script.get(self.path, [])
        self.send_response(statuses.pop(0) if statuses else 204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    """A local HTTP server; yields its base URL."""
    _Receiver.calls, _Receiver.script = [], {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _deliver(
    jobs: list[Job], secret: str | None = "s3cret", allow: list[str] | None = None
) -> None:
    """Send each job's webhook and wait until every call has ended."""

    async def main() -> None:
        sender = WebhookSender(
            secret=secret,
            timeout_s=5,
            attempts=3,
            policy=OutboundPolicy.of(["127.0.0.1"] if allow is None else allow),
        )
        for job in jobs:
            sender.send(job)
        await sender.close(timeout=30)

    asyncio.run(main())


def test_a_finished_job_is_posted_signed(receiver: str) -> None:
    job = msgspec.structs.replace(JOB, webhook_url=f"{receiver}/hook")
    _deliver([job])
    [(path, body, headers)] = _Receiver.calls
    assert path == "/hook"
    assert verify_signature(body, headers[SIGNATURE_HEADER], "s3cret")
    assert msgspec.json.decode(body, type=Job) == job


def test_server_errors_are_retried_and_client_errors_are_not(receiver: str) -> None:
    _Receiver.script = {"/retry": [503, 500, 200], "/refuse": [400, 200, 200]}
    _deliver(
        [
            msgspec.structs.replace(JOB, webhook_url=f"{receiver}/{name}")
            for name in ("retry", "refuse")
        ],
        secret=None,
    )
    paths = [path for path, _body, _headers in _Receiver.calls]
    assert sorted(paths) == ["/refuse", "/retry", "/retry", "/retry"]


def test_a_job_without_a_webhook_calls_nothing(receiver: str) -> None:
    _deliver([msgspec.structs.replace(JOB, webhook_url=None)])
    assert _Receiver.calls == []


def test_a_webhook_to_an_address_not_allowed_is_not_called_when_the_job_ends(
    receiver: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Submitted while allowed, say; by the time the job ends the operator took it back.
    _deliver([msgspec.structs.replace(JOB, webhook_url=f"{receiver}/hook")], allow=[])
    assert _Receiver.calls == []
    assert any("not called" in r.getMessage() for r in caplog.records)

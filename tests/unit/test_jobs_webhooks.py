"""Webhook calls: the HMAC signature a receiver checks, retries, and giving up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import msgspec

from aimesh.jobs import SIGNATURE_HEADER, Job, sign, verify_signature
from aimesh.jobs.webhooks import WebhookSender

JOB = Job(
    id="b" * 32,
    kind="noop",
    state="succeeded",
    max_attempts=3,
    attempts=1,
    webhook_url="http://receiver.test/hook",
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


def _sender(handler: httpx.MockTransport, secret: str | None = "s3cret") -> WebhookSender:
    return WebhookSender(secret=secret, timeout_s=1, attempts=3, transport=handler)


def test_a_finished_job_is_posted_signed() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async def main() -> None:
        sender = _sender(httpx.MockTransport(answer))
        sender.send(JOB)
        await sender.close()

    asyncio.run(main())
    [request] = seen
    assert request.method == "POST" and str(request.url) == JOB.webhook_url
    assert verify_signature(request.content, request.headers[SIGNATURE_HEADER], "s3cret")
    assert msgspec.json.decode(request.content, type=Job) == JOB


def test_server_errors_are_retried_and_client_errors_are_not() -> None:
    statuses = {"retry": [503, 500, 200], "refuse": [400, 200, 200]}
    calls = {name: 0 for name in statuses}

    def answer(request: httpx.Request) -> httpx.Response:
        name = request.url.path.strip("/")
        calls[name] += 1
        return httpx.Response(statuses[name][calls[name] - 1])

    async def main() -> None:
        sender = _sender(httpx.MockTransport(answer), secret=None)
        for name in statuses:
            sender.send(msgspec.structs.replace(JOB, webhook_url=f"http://r.test/{name}"))
        await sender.close(timeout=10)

    asyncio.run(main())
    assert calls == {"retry": 3, "refuse": 1}


def test_a_job_without_a_webhook_calls_nothing() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("called")

    async def main() -> None:
        sender = _sender(httpx.MockTransport(answer))
        sender.send(msgspec.structs.replace(JOB, webhook_url=None))
        await sender.close()

    asyncio.run(main())

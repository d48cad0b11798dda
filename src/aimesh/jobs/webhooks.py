"""Webhook calls when a job ends: the record as JSON, signed with HMAC-SHA256.

The receiver checks ``X-Aimesh-Signature: sha256=<hex>`` (the HMAC of the raw body with the
shared ``jobs.webhook_secret``) with :func:`verify_signature`. Calls run in the background
with a timeout and a bounded number of attempts, so they never hold up a worker's
acknowledgement; a process that stops waits a little for the calls still going (see
:meth:`WebhookSender.close`). Delivery is at most ``webhook_attempts`` tries, by the process
that ended the job: one that dies first does not call.

URLs go through :mod:`aimesh.outbound`: checked when the job is submitted
(:func:`check_webhook`, ``url_refused``) and again when the call is made, to the address
checked, with redirects off; loopback, private, link-local and metadata addresses are
refused unless ``jobs.webhook_allow`` names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging

import httpx

from aimesh.config import JobsSettings
from aimesh.errors import UrlRefused
from aimesh.jobs.store import encode_job
from aimesh.jobs.types import Job
from aimesh.outbound import OutboundClient, OutboundPolicy, check_url

__all__ = [
    "JOB_HEADER",
    "SIGNATURE_HEADER",
    "WebhookSender",
    "check_webhook",
    "sign",
    "verify_signature",
]

log = logging.getLogger("aimesh.jobs.webhooks")

SIGNATURE_HEADER = "X-Aimesh-Signature"
JOB_HEADER = "X-Aimesh-Job"
_FIRST_RETRY_S = 0.5


def sign(body: bytes, secret: str) -> str:
    """The ``X-Aimesh-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, signature: str | None, secret: str) -> bool:
    """Whether ``signature`` (the header's value) signs ``body`` with ``secret``."""
    return signature is not None and hmac.compare_digest(sign(body, secret), signature)


async def check_webhook(url: str | None, policy: OutboundPolicy) -> None:
    """Refuse (:class:`~aimesh.errors.UrlRefused`) a webhook URL the worker may not call."""
    if url is not None:
        await check_url(url, policy)


class WebhookSender:
    """Calls the webhooks of finished jobs in background tasks."""

    def __init__(
        self,
        *,
        secret: str | None,
        timeout_s: float,
        attempts: int,
        policy: OutboundPolicy,
    ) -> None:
        self._secret = secret
        self._attempts = attempts
        self._client = OutboundClient(policy, timeout_s=timeout_s)
        self._pending: set[asyncio.Task[None]] = set()
        self._warned = False

    @classmethod
    def of(cls, settings: JobsSettings) -> WebhookSender:
        """The sender the jobs settings describe (secret, timeout, attempts, allow-list)."""
        secret = settings.webhook_secret
        return cls(
            secret=secret.get_secret_value() if secret is not None else None,
            timeout_s=settings.webhook_timeout_s,
            attempts=settings.webhook_attempts,
            policy=OutboundPolicy.of(settings.webhook_allow),
        )

    @property
    def policy(self) -> OutboundPolicy:
        """The allow-list the URLs are checked against."""
        return self._client.policy

    def send(self, job: Job) -> None:
        """Call ``job``'s webhook (if it has one) in the background."""
        if job.webhook_url is None:
            return
        if self._secret is None and not self._warned:
            self._warned = True
            log.warning(
                "webhooks go out unsigned: set jobs.webhook_secret (AIMESH_JOBS__WEBHOOK_SECRET) "
                "to sign them with HMAC-SHA256"
            )
        task = asyncio.create_task(self._deliver(job, job.webhook_url), name=f"webhook-{job.id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, job: Job, url: str) -> None:
        body = encode_job(job)
        headers = {"Content-Type": "application/json", JOB_HEADER: job.id}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        delay = _FIRST_RETRY_S
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.post(url, content=body, headers=headers)
            except UrlRefused as exc:
                log.warning("webhook of job %s not called: %s", job.id, exc.message)
                return
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the receiver refuses this call; asking again will not help
            if attempt < self._attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("webhook of job %s to %s failed: %s", job.id, url, problem)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for calls in flight, cancel the rest, close."""
        if self._pending:
            _done, late = await asyncio.wait(set(self._pending), timeout=timeout)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._client.aclose()

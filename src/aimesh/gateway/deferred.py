"""Async inference: a model call the gateway defers into a job, run later by a worker.

``POST /v2/models/{name}[/versions/{v}]/infer?async=true`` (or with ``Prefer:
respond-async``) does not wait for the model. The gateway routes the request as it would
a synchronous one (an unknown model is a 404 now, not a failed job later), stores the
body and the headers that go with it as an input blob (:mod:`aimesh.jobs.data`), queues a
job of kind ``inference`` and answers ``202 Accepted`` with the job's record and
``Location: /api/jobs/{id}``. Options: ``Idempotency-Key: K`` (a retried submission
returns the first job; the key reused for another request is a 409
``idempotency_conflict``), ``webhook=URL`` in the query (called, signed, when the job ends).

A worker (``aimesh worker inference``) runs :func:`inference_job`: it finds the model's
instances in discovery with the gateway's own routing table and instance policy, sends
the stored request (its request id and trace context included, so logs meet), and
stores the answer as the job's result blob for a day. ``GET /api/jobs/{id}/result``
returns it as the model answered it: body, content type and status. A model's 4xx
(bad input) fails the job at once with the model's error code; an unreachable model or
a 5xx is retried with backoff, then dead-lettered, like any job.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec

from aimesh.auth import IDENTITY_HEADER, Identity
from aimesh.bus import Bus, list_instances
from aimesh.config import JobsSettings
from aimesh.errors import (
    AimeshError,
    BusUnavailable,
    InvalidRequest,
    JobRejected,
    NoInstance,
    RequestTooLarge,
    UpstreamError,
    error_from_body,
)
from aimesh.gateway.http1 import HttpClient
from aimesh.gateway.instances import LeastOutstanding, Upstream
from aimesh.gateway.routing import RoutingTable
from aimesh.gateway.upstream import NotSent, call_upstream
from aimesh.jobs import Blob, Job, JobClient, JobContext, JobData, JobSpec, input_key, result_path
from aimesh.protocol import MODEL_NAME, VERSION_REF
from aimesh.resilience import DEADLINE_HEADER, deadline_header_value

__all__ = [
    "KIND",
    "AsyncRequest",
    "Deferrer",
    "InferencePayload",
    "async_request",
    "inference_job",
]

KIND = "inference"
"""The job kind of a deferred model call."""

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})
# Not part of the model call: what the gateway reads for itself or must not replay.
# Credentials are never stored with a job: the worker calls the model with the service
# credential, acting for the job's submitter.
_NOT_REPLAYED = frozenset(
    {
        b"prefer", b"idempotency-key", b"content-type", b"cookie", b"x-api-key",
        b"authorization", IDENTITY_HEADER.encode(),
    }
)  # fmt: skip
# How long a worker trusts its listing of model instances before reading discovery again.
_LISTING_TTL_S = 2.0
_DEFAULT_TIMEOUT_S = 60.0
_ERROR = msgspec.json.Decoder(dict[str, Any])
# Answers that say "not now" rather than "never": retried like a 5xx.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_IDENTITY = IDENTITY_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()


class InferencePayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The payload of an ``inference`` job."""

    model: str
    version: str | None = None
    """As routed: a version number, an alias the instances follow, or none."""
    path: str
    """The request target to send to the instance (``/v2/models/.../infer[?query]``)."""
    input: str
    """The token of the input blob: the request body and its headers."""

    def check(self) -> InferencePayload:
        """Raise :class:`JobRejected` unless every field is safe to route and send."""
        if not MODEL_NAME.fullmatch(self.model):
            raise JobRejected(f"{self.model!r} is not a model name")
        if self.version is not None and not VERSION_REF.fullmatch(self.version):
            raise JobRejected(f"{self.version!r} is not a model version or alias")
        prefix = f"/v2/models/{self.model}/"
        if (
            not self.path.startswith(prefix)
            or not self.path.isascii()
            or any(c.isspace() or not c.isprintable() for c in self.path)
        ):
            raise JobRejected(f"{self.path!r} is not an infer path of model {self.model!r}")
        return self


# -- the gateway's side -----------------------------------------------------------------


class AsyncRequest(msgspec.Struct, frozen=True):
    """What a client asked of a deferred call."""

    prefer: bool
    """Asked with ``Prefer: respond-async`` (the answer says ``Preference-Applied``)."""
    webhook_url: str | None
    idempotency_key: str | None
    query: bytes
    """The query to pass on to the model, without the gateway's own parameters."""


def async_request(
    query_string: bytes, prefer: bytes | None, idempotency_key: str | None = None
) -> AsyncRequest | None:
    """The async options of a request, or ``None`` when it is to be answered in place.

    ``prefer`` and ``idempotency_key`` are the request's headers of those names. Raises
    :class:`InvalidRequest` for an ``async`` value that is not a boolean.
    """
    if not query_string and prefer is None:
        return None  # the common case: a synchronous call, decided without parsing
    wanted = False
    webhook: str | None = None
    passed: list[tuple[str, str]] = []
    if query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name == "async":
                if value.lower() not in _TRUE | _FALSE:
                    raise InvalidRequest(f"async={value!r}: say true or false", parameter="async")
                wanted = value.lower() in _TRUE
            elif name == "webhook":
                webhook = value
            else:
                passed.append((name, value))
    tokens = {t.split(b"=")[0].strip().lower() for t in prefer.split(b",")} if prefer else set()
    prefers = b"respond-async" in tokens
    if not (wanted or prefers):
        if webhook is not None:
            raise InvalidRequest("webhook= applies to async requests (add async=true)")
        return None
    query = ("?" + urlencode(passed)).encode() if passed else b""
    return AsyncRequest(prefers, webhook, idempotency_key, query)


class Deferrer:
    """Queues deferred model calls; usable once :meth:`attach` gave it the bus."""

    def __init__(self, settings: JobsSettings) -> None:
        self.settings = settings
        self._jobs: JobClient | None = None
        self._data: JobData | None = None

    async def attach(self, bus: Bus) -> None:
        """Start queueing on ``bus`` (its topology declared)."""
        self._data = await JobData.open(bus)
        self._jobs = await JobClient.open(bus, self.settings, declare=False)

    async def close(self) -> None:
        """Stop queueing; webhooks in flight get their timeout."""
        jobs, self._jobs = self._jobs, None
        self._data = None
        if jobs is not None:
            await jobs.close()

    async def submit(
        self,
        *,
        model: str,
        version: str | None,
        path: bytes,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        options: AsyncRequest,
        identity: Identity | None = None,
    ) -> Job:
        """Store the request and queue its job; returns the queued (or first) job.

        A webhook URL the workers may not call is refused (``url_refused``) before anything
        is stored, and so is any request while the bus is lost (``bus_unavailable``, at
        once). ``identity``: the caller (unset: the local operator), recorded as the job's
        submitter; the request's credentials are never stored.
        """
        if self._jobs is None or self._data is None:
            raise BusUnavailable("the gateway is not connected to the bus yet; try again")
        await self._jobs.check_webhook(options.webhook_url)
        self._jobs.check_connected()
        content_type = "application/json"
        kept: list[tuple[str, str]] = []
        for name, value in headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name not in _NOT_REPLAYED:
                kept.append((name.decode("latin-1"), value.decode("latin-1")))
        target = (path + options.query).decode("latin-1")
        # What the key is bound to: the model call (not the token of its stored copy, nor
        # its request id or trace context, new each time), so that a client's retry finds
        # its first job and another request conflicts.
        framing = next((v for n, v in kept if n == "inference-header-content-length"), None)
        call = [model, version, target, content_type, framing, options.webhook_url]
        digest = hashlib.sha256(msgspec.json.encode(call) + b"\n" + body).hexdigest()
        token = await self._data.put_input(Blob(body=body, content_type=content_type, headers=kept))
        payload = InferencePayload(model=model, version=version, path=target, input=token)
        try:
            spec = msgspec.convert(
                {
                    "kind": KIND,
                    "payload": msgspec.to_builtins(payload),
                    "idempotency_key": options.idempotency_key,
                    "webhook_url": options.webhook_url,
                },
                JobSpec,
            )
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"cannot defer this request: {exc}") from exc
        return await self._jobs.submit(spec, identity=identity, digest=digest)


# -- the worker's side ------------------------------------------------------------------


class _Caller:
    """The gateway's way to a model instance, for a worker: routing read from discovery."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.client = HttpClient(max_connections_per_upstream=16)
        self.table = RoutingTable(on_removed=self._forget)
        self.policy = LeastOutstanding()
        self.data: JobData | None = None
        self._credential: bytes | None = None
        self._listed_at = float("-inf")
        self._lock = asyncio.Lock()

    def _forget(self, upstream: Upstream) -> None:
        if upstream.rest is not None:
            self.client.forget(*upstream.rest)

    async def credential(self) -> bytes:
        """The service credential the worker calls model services with."""
        if self._credential is None:
            from aimesh.config import load_settings
            from aimesh.registry import service_credential

            settings = await asyncio.to_thread(load_settings)
            key = await asyncio.to_thread(service_credential, settings)
            self._credential = key.encode("latin-1")
        return self._credential

    async def blobs(self) -> JobData:
        if self.data is None:
            self.data = await JobData.open(self.bus)
        return self.data

    async def candidates(self, model: str, version: str | None) -> tuple[Upstream, ...]:
        """The instances serving ``model`` (``version``), reading discovery when stale."""
        target = self.table.match(model, version)
        if target is None or time.monotonic() - self._listed_at > _LISTING_TTL_S:
            await self._refresh()
            target = self.table.match(model, version)
        found = tuple(u for u in target.candidates if u.rest is not None) if target else ()
        if not found:
            what = f"{model}@{version}" if version else model
            raise NoInstance(f"no running instance serves {what}", model=model)
        return found

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._listed_at < 0.05:
                return  # another job just read it
            instances = await list_instances(self.bus, "model")
            now = time.monotonic()
            for instance in instances:
                self.table.put(instance, now)
            for key in self.table.keys() - {i.key for i in instances}:
                self.table.remove(key)
            self._listed_at = now


_callers: weakref.WeakKeyDictionary[Bus, _Caller] = weakref.WeakKeyDictionary()


def _caller(bus: Bus) -> _Caller:
    caller = _callers.get(bus)
    if caller is None:
        caller = _callers[bus] = _Caller(bus)
    return caller


async def inference_job(ctx: JobContext) -> dict[str, Any]:
    """Run a deferred model call; the answer becomes the job's result blob."""
    try:
        payload = msgspec.convert(ctx.payload, InferencePayload).check()
    except msgspec.ValidationError as exc:
        raise JobRejected(f"not an inference job: {exc}") from exc
    caller = _caller(ctx.bus)
    data = await caller.blobs()
    request = await data.get(input_key(payload.input))
    if request is None:
        raise JobRejected("the request of this job is gone (its input expired or was never stored)")
    timeout = ctx.timeout_s or _DEFAULT_TIMEOUT_S
    headers = [(b"content-type", request.content_type.encode("latin-1"))]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
    # The service credential, acting for whoever submitted the job: the model service
    # checks that identity's scope.
    submitter = ctx.job.identity.header().encode()
    headers += [(b"x-api-key", await caller.credential()), (_IDENTITY, submitter)]
    target = payload.path.encode()

    async def exchange(upstream: Upstream, timeout_s: float) -> tuple[int, bytes, Blob]:
        assert upstream.rest is not None  # candidates() keeps REST instances only
        pool = caller.client.pool(*upstream.rest)
        # The model gives up when the job's attempt does.
        sent = [*headers, (_DEADLINE, deadline_header_value(timeout_s).encode())]
        response = await pool.request(b"POST", target, sent, request.body, timeout=timeout_s)
        body = await response.body(timeout_s)
        if response.status == 503 and b'"shutting_down"' in body:
            raise NotSent("the instance is shutting down")
        kept = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in response.headers
            if name.lower() == b"inference-header-content-length"
        ]
        content_type = (response.header(b"content-type") or b"application/json").decode()
        blob = Blob(body=body, content_type=content_type, headers=kept, status=response.status)
        return response.status, body, blob

    candidates = await caller.candidates(payload.model, payload.version)
    ctx.progress(0.1, "sent to the model")
    status, body, blob = await call_upstream(
        candidates, exchange, policy=caller.policy, timeout_s=timeout
    )
    if status >= 400:
        raise _model_error(status, body)
    try:
        with ctx.commit("storing the model's answer"):
            await data.put_result(ctx.job.id, blob)
    except RequestTooLarge as exc:
        raise JobRejected(
            f"the model's answer of {exc.size} bytes is larger than a result the bus carries "
            f"({exc.limit}); ask for binary outputs, or call the model synchronously",
            size=exc.size,
            limit=exc.limit,
        ) from exc
    ctx.result_ref = result_path(ctx.job.id)
    return {"status": status, "content_type": blob.content_type, "bytes": len(body)}


def _model_error(status: int, body: bytes) -> AimeshError:
    """The model's error answer as the error the job fails (4xx) or retries (5xx) with."""
    try:
        parsed = _ERROR.decode(body)
        code, message = str(parsed["code"]), str(parsed["error"])
    except (msgspec.DecodeError, KeyError):
        code, message = "", body[:200].decode("utf-8", "replace")
    if status < 500 and status not in _RETRYABLE_4XX:
        error = error_from_body(code, message) if code else None
        if isinstance(error, InvalidRequest):
            return error
        return JobRejected(f"the model refused the request ({status} {code}): {message}")
    return UpstreamError(f"the model failed ({status} {code or 'error'}): {message}")

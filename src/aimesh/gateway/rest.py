"""The gateway's REST adapter: a bare ASGI app in front of every service.

Routes: OIP v2 model calls (``/v2/models/{name}[/versions/{v}]/{infer,ready}`` and
metadata) to an instance chosen by :func:`call_upstream`, or, with ``?async=true`` /
``Prefer: respond-async``, queued as a job (:mod:`aimesh.gateway.deferred`); ``POST
/v2/aggregate``; ``/api/<service>/...`` to that service (``/api/registry`` first; a record
kind's ``/api/<plural>`` to the registry, which announces them in discovery); and what the
gateway answers itself (health, ``/v2``, ``/metrics``, ``/openapi.json``, ``/docs`` and its assets
under ``/docs/assets/``, served from installed files, never a CDN). Bodies are
forwarded as bytes, never decoded: JSON and the binary tensor extension alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from aimesh.auth import Identity, Keyring, Scope, key_from_headers
from aimesh.config import Fallback
from aimesh.errors import (
    AimeshError,
    BusUnavailable,
    DeadlineExceeded,
    InvalidRequest,
    NoInstance,
    UpstreamError,
    UpstreamTimeout,
)
from aimesh.gateway import aggregate
from aimesh.gateway._asgi import (
    JSON,
    REQUEST_ID,
    ASGIScope,
    Receive,
    RouteNotFound,
    Send,
    allow,
    gateway_error_body,
    gateway_internal_error,
    log_failure,
    model_path,
    query,
    raw_target,
    read_body,
    respond,
    status_of,
)
from aimesh.gateway.core import (
    CallKind,
    ModelCore,
    breakers_report,
    static_answer,
)
from aimesh.gateway.deferred import AsyncRequest, Deferrer, async_request
from aimesh.gateway.headers import RequestHead
from aimesh.gateway.http1 import HttpClient, UpstreamResponse
from aimesh.gateway.instances import InstancePolicy, Upstream
from aimesh.gateway.metrics import GATEWAY, GatewayMetrics
from aimesh.gateway.openapi import MergedOpenApi
from aimesh.gateway.routing import Router, Target
from aimesh.gateway.shadow import Answer, Shadows, rest_copy
from aimesh.gateway.upstream import Exchange, NotSent, call_upstream
from aimesh.jobs import encode_job
from aimesh.protocol import InferenceRequest, TensorSpec, check_inputs, rest_codec
from aimesh.registry import record_kinds
from aimesh.resilience import (
    DEADLINE_HEADER,
    FALLBACK_HEADER,
    Deadline,
    Outcome,
    classify_status,
    deadline_header_value,
    fallback_header_value,
)
from aimesh.rest import (
    DOCS_ASSETS_URL,
    Guard,
    Readiness,
    check_infer_type,
    check_json_type,
    docs_asset,
    error_headers,
    swagger_page,
)
from aimesh.rollouts import ARM_HEADER, FigureBook, OutcomeClass, class_of

__all__ = ["GatewayApp"]

log = logging.getLogger("aimesh.gateway")

# Hop-by-hop or re-made by this hop: never copied from an upstream's answer.
_DROP_FROM_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server", REQUEST_ID}
)
# Answers up to this size are read whole before relaying; larger ones stream through.
_BUFFER_LIMIT = 1 << 20
_ARM = ARM_HEADER.encode()
_FALLBACK = FALLBACK_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()
# Model versions whose inputs are kept for the async check; past it the table starts over.
_INPUTS_KEPT = 1024
_SERVER_METADATA = json.dumps(
    {"name": "aimesh-gateway", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
).encode()


def _decode_request(body: bytes, headers: list[tuple[bytes, bytes]]) -> InferenceRequest:
    """The OIP request in ``body`` (JSON, or the binary extension's framing), else raise."""
    length = next((v for n, v in headers if n == b"inference-header-content-length"), None)
    if length is not None and not length.isdigit():
        raise InvalidRequest("Inference-Header-Content-Length must be a number of bytes")
    return rest_codec.decode_request(body, header_length=None if length is None else int(length))


class _Outcome:
    """What the metrics say of one request; filled in as it goes."""

    __slots__ = (
        "arm", "failure", "fallback", "live", "model", "route", "started", "status", "upstream",
        "version",
    )  # fmt: skip

    def __init__(self) -> None:
        self.arm: str | None = None
        """The traffic policy's arm that answered, returned in a header."""
        self.model: str | None = None
        """The model an inference call went to (counted in the live figures)."""
        self.version: str | None = None
        """The version of the instance it went to last."""
        self.failure: OutcomeClass | None = None
        """How the call failed without an answer (a timeout, no connection)."""
        self.fallback = False
        """Whether a fallback answered instead."""
        self.live: asyncio.Future[Answer | None] | None = None
        """Where the live answer goes for a shadow copy to be compared with."""
        self.route = "unknown"
        self.upstream = GATEWAY
        self.status = 500
        self.started = False


async def _abandon(response: UpstreamResponse) -> None:
    response.abandon()


def _by_status(response: UpstreamResponse) -> Outcome:
    return classify_status(response.status)


_HTTP: CallKind[UpstreamResponse] = CallKind(classify=_by_status, discard=_abandon)
"""An HTTP answer is judged by its status; a 5xx retried elsewhere has its body dropped."""

_Answer = Callable[[Send, "RequestHead", "_Outcome", bytes], Awaitable[None]]


class GatewayApp:
    """The ASGI app: route, guard, forward, relay."""

    def __init__(
        self,
        *,
        router: Router,
        client: HttpClient,
        policy: InstancePolicy,
        keyring: Keyring,
        metrics: GatewayMetrics,
        openapi: MergedOpenApi,
        max_request_bytes: int,
        upstream_timeout_s: float,
        readiness: Readiness,
        registry_fallback: Upstream | None = None,
        deferrer: Deferrer | None = None,
        guard: Guard | None = None,
        core: ModelCore | None = None,
        figures: FigureBook | None = None,
        shadows: Shadows | None = None,
    ) -> None:
        self.guard = guard or Guard()
        """Browser origins and Host names (:mod:`aimesh.rest.guard`)."""
        self.router = router
        self.client = client
        self.policy = policy
        self.core = core or ModelCore(router, policy, call_timeout_s=upstream_timeout_s)
        """Plans model calls (traffic policy, routing) and runs them."""
        self.figures = figures or FigureBook("gateway")
        """Inference outcomes per model version, shared with the rollout controller."""
        self.shadows = shadows or Shadows(self.core, self.figures)
        """Copies of calls to a shadow version, compared with the live answers (one for
        every adapter of the gateway)."""
        """Copies of calls to a shadow version, compared with the live answers."""
        self.keyring = keyring
        self.metrics = metrics
        self.openapi = openapi
        self.max_request_bytes = max_request_bytes
        self.timeout = upstream_timeout_s
        self.readiness = readiness
        """Its bus connection and discovery listing (:mod:`aimesh.rest.readiness`)."""
        self.registry_fallback = registry_fallback
        self.record_apis = frozenset(kind.plural for kind in record_kinds())
        """The ``/api/<plural>`` of every record kind this process knows: the registry's,
        wherever discovery does not say (the ``registry.url`` fallback, metrics)."""
        self.deferrer = deferrer
        """Queues ``?async=true`` model calls as jobs; ``None``: they are refused."""
        self._inputs: dict[tuple[str, str], list[TensorSpec]] = {}
        """The inputs of model versions, as their instances said (a version never changes)."""
        self._own: dict[str, tuple[str, str, Scope | None, _Answer]] = {
            "/health": ("health", "GET", None, self._health),
            "/health/live": ("health", "GET", None, self._live),
            "/v2/health/live": ("health", "GET", None, self._live),
            "/v2/health/ready": ("health", "GET", None, self._ready),
            "/v2": ("server", "GET", None, self._server),
            "/v2/aggregate": ("aggregate", "POST", "infer", self._aggregate),
            "/metrics": ("metrics", "GET", "read", self._metrics),
            "/breakers": ("breakers", "GET", "read", self._breakers),
            "/openapi.json": ("openapi", "GET", None, self._openapi),
            "/docs": ("docs", "GET", None, self._docs),
        }

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        # No lifespan: the server module starts and stops everything around the app.

    async def _http(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        head = RequestHead.read(scope["headers"])
        outcome = _Outcome()
        try:
            await self._route(scope, receive, send, head, outcome)
        except AimeshError as exc:
            outcome.status = status = status_of(exc)
            if isinstance(exc, UpstreamError):
                outcome.failure = "timeout" if isinstance(exc, UpstreamTimeout) else "connection"
            elif isinstance(exc, DeadlineExceeded):
                # The caller's own limit ran out: counted as the caller's, as by the breakers.
                outcome.failure = "client"
            if outcome.started:
                log.warning("response cut short: %s", exc.message)
                return
            log_failure(log, exc, status, head.request_id)
            body = gateway_error_body(exc, head.request_id)
            await respond(send, status, body, head.request_id, JSON, error_headers(exc, status))
        except Exception:
            log.exception("unexpected error", extra={"request_id": head.request_id})
            if not outcome.started:
                await respond(send, 500, gateway_internal_error(head.request_id), head.request_id)
        finally:
            if outcome.live is not None and not outcome.live.done():
                outcome.live.set_result(None)  # no whole answer to compare the shadow's with
            elapsed = time.perf_counter() - started
            self.metrics.observe(
                outcome.route, "rest", outcome.upstream, str(outcome.status), elapsed
            )
            if outcome.model is not None and outcome.version is not None:
                self.figures.count(
                    outcome.model, outcome.version, outcome.failure or class_of(outcome.status),
                    elapsed, fallback=outcome.fallback,
                )  # fmt: skip

    async def _route(
        self, scope: ASGIScope, receive: Receive, send: Send, head: RequestHead, outcome: _Outcome
    ) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        self.guard.check(method, head.host, head.origin, scope)
        if path.startswith("/v2/models/"):
            await self._model(scope, receive, send, head, outcome, path[11:].split("/"))
            return
        if path.startswith("/api/"):
            await self._service(scope, receive, send, head, outcome)
            return
        own = self._own.get(path)
        if own is None:
            if path.startswith(DOCS_ASSETS_URL):
                outcome.route = "docs"
                allow(method, "GET")
                await self._docs_asset(send, head, outcome, path[len(DOCS_ASSETS_URL) :])
                return
            outcome.route = "unknown"
            raise RouteNotFound(f"no route {method} {path}")
        route, allowed, scope_needed, answer = own
        outcome.route = route
        allow(method, allowed)
        self._check(scope, head, scope_needed)
        if allowed == "POST" and head.content_type is not None:
            check_json_type(head.content_type)
        body = await self._body(head, receive) if allowed == "POST" else b""
        await answer(send, head, outcome, body)

    def _check(self, scope: ASGIScope, head: RequestHead, needed: Scope | None) -> Identity:
        """The caller, if the request's key may use a route needing ``needed``; else raise."""
        client = scope.get("client")
        return self.keyring.check(
            key_from_headers(head.api_key, head.authorization),
            needed,
            client=client[0] if client else "unknown",
            on_behalf=head.on_behalf,
        )

    def _authenticate(self, scope: ASGIScope, head: RequestHead) -> Identity:
        """The caller, whatever their scopes (the service behind decides); else raise."""
        client = scope.get("client")
        return self.keyring.authenticate(
            key_from_headers(head.api_key, head.authorization),
            client=client[0] if client else "unknown",
            on_behalf=head.on_behalf,
        )

    async def _body(self, head: RequestHead, receive: Receive) -> bytes:
        return await read_body(receive, head.content_length, self.max_request_bytes)

    # -- model routes ---------------------------------------------------------------------

    async def _model(
        self,
        scope: ASGIScope,
        receive: Receive,
        send: Send,
        head: RequestHead,
        outcome: _Outcome,
        parts: list[str],
    ) -> None:
        name, rest = parts[0], parts[1:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            version, rest = rest[1], rest[2:]
        if not rest:
            outcome.route, allowed, suffix = "metadata", "GET", b""
        elif rest == ["infer"]:
            outcome.route, allowed, suffix = "infer", "POST", b"/infer"
        elif rest == ["ready"]:
            outcome.route, allowed, suffix = "ready", "GET", b"/ready"
        else:
            raise RouteNotFound(f"no route {scope['method']} {scope['path']}")
        if not name:
            raise RouteNotFound("name a model: /v2/models/{name}/...")
        allow(scope["method"], allowed)
        deferred = None
        if suffix == b"/infer":
            check_infer_type(head.content_type)
            deferred = async_request(scope["query_string"], head.prefer, head.idempotency_key)
        caller = self._check(scope, head, "infer")
        deadline = self.core.deadline(head.deadline)
        body = await self._body(head, receive) if allowed == "POST" else b""
        plan = await self.core.plan(name, version, scope["headers"])
        target = plan.target
        outcome.arm = plan.arm
        if suffix == b"/infer" and deferred is None:
            outcome.model = name
            # Counted for the version planned, even if no instance of it is reached (an
            # open circuit); the instance that answers says its own.
            outcome.version = target.served
        if target.version == version:
            path = scope.get("raw_path") or scope["path"].encode()
        else:  # an alias resolved here: name the version (or none) the instance knows
            path = model_path(name, target.version, suffix)
        if deferred is not None:
            # Checked as the model would check it: a 4xx now, not a failed job later.
            await self._check_async(head, target, _decode_request(body, head.forward))
            routed = version if target.version is None else target.version
            await self._defer(send, head, outcome, name, routed, path, body, deferred, caller)
            return
        upstream_path = path + query(scope)
        method = b"POST" if allowed == "POST" else b"GET"
        if plan.shadow is not None and outcome.model is not None:
            shadow_path = model_path(name, plan.shadow.version, b"/infer") + query(scope)
            outcome.live = self.shadows.copy(
                name, plan.shadow, rest_copy(self.client, shadow_path, head.forward, body)
            )
        fallback = self.core.fallback_for(name, plan) if outcome.model is not None else None
        try:
            response = await self.core.call(
                outcome.route,
                target,
                self._exchange(method, upstream_path, head.forward, body, outcome),
                kind=_HTTP,
                on_not_sent=self._not_sent,
                deadline=deadline,
            )
        except AimeshError as exc:
            if fallback is None or not self.core.falls_back(deadline, exc):
                raise
            log.info("%s failed (%s); its fallback answers", name, exc.message)
            outcome.failure = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream"
            await self._fall_back(send, scope, head, outcome, name, fallback, body, deadline)
            return
        if fallback is not None and response.status >= 500 and self.core.falls_back(deadline):
            response.abandon()
            outcome.failure = "upstream"
            await self._fall_back(send, scope, head, outcome, name, fallback, body, deadline)
            return
        await self._relay(send, response, head, outcome)

    async def _fall_back(
        self,
        send: Send,
        scope: ASGIScope,
        head: RequestHead,
        outcome: _Outcome,
        name: str,
        fallback: Fallback,
        body: bytes,
        deadline: Deadline | None,
    ) -> None:
        """Answer a failed inference call with ``name``'s fallback, marked in a header."""
        outcome.fallback = True
        if outcome.live is not None and not outcome.live.done():
            outcome.live.set_result(None)  # the fallback's answer is not the version's
        marked = (_FALLBACK, fallback_header_value(fallback).encode())
        if fallback.outputs is not None:
            outcome.status = 200
            answer = static_answer(name, fallback)
            await respond(send, 200, answer, head.request_id, JSON, [marked])
            return
        target = await self.core.fallback_target(name, fallback)
        path = model_path(target.model, target.version, b"/infer") + query(scope)
        response = await self.core.call(
            "infer", target, self._exchange(b"POST", path, head.forward, body, None),
            kind=_HTTP, on_not_sent=self._not_sent, deadline=deadline,
        )  # fmt: skip
        await self._relay(send, response, head, outcome, extra=[marked])

    async def _defer(
        self,
        send: Send,
        head: RequestHead,
        outcome: _Outcome,
        name: str,
        version: str | None,
        path: bytes,
        body: bytes,
        options: AsyncRequest,
        caller: Identity,
    ) -> None:
        """Queue the call as an ``inference`` job and answer 202 with the job's record."""
        outcome.route = "infer_async"
        if self.deferrer is None:
            raise BusUnavailable("async inference needs the bus, which this gateway has not")
        job = await self.deferrer.submit(
            model=name, version=version, path=path, body=body, headers=head.forward,
            options=options, identity=caller,
        )  # fmt: skip
        outcome.status = 202
        extra = [(b"location", f"/api/jobs/{job.id}".encode())]
        if options.prefer:
            extra.append((b"preference-applied", b"respond-async"))
        await respond(send, 202, encode_job(job), head.request_id, JSON, extra)

    async def _check_async(
        self, head: RequestHead, target: Target, request: InferenceRequest
    ) -> None:
        """Check a deferred call's inputs against the model's own metadata (its input names,
        datatypes and shapes), by the check the model service runs (:func:`check_inputs`).

        The metadata comes from an instance, as the caller would read it, once per model
        version: a version's signature never changes, so later calls to the same version
        are checked without a round trip. An instance that cannot say leaves the check to
        the job (the model checks every call anyway).
        """
        served = target.served
        key = (target.model, served) if served is not None else None
        specs = self._inputs.get(key) if key is not None else None
        if specs is None:
            specs = await self._model_inputs(head, target)
            if specs is None:
                return
            if key is not None:
                if len(self._inputs) >= _INPUTS_KEPT:
                    self._inputs.clear()
                self._inputs[key] = specs
        check_inputs(target.model, specs, request.inputs)

    async def _model_inputs(self, head: RequestHead, target: Target) -> list[TensorSpec] | None:
        """The inputs an instance of ``target`` documents, or None if none can say."""
        path = model_path(target.model, target.version, b"")
        headers = head.forward_credentials + head.forward_tracing
        try:
            response = await self.core.call(
                "metadata",
                target,
                self._exchange(b"GET", path, headers, b"", None),
                kind=_HTTP,
                on_not_sent=self._not_sent,
            )
            body = await response.body(self.timeout)
        except AimeshError as exc:
            log.info("no metadata of %s to check an async call against: %s", target.model, exc)
            return None
        if response.status != 200:
            log.info("no metadata of %s to check an async call against (%d)",
                     target.model, response.status)  # fmt: skip
            return None
        return rest_codec.decode_model_inputs(body)

    def _exchange(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        outcome: _Outcome | None,
        *,
        model: bool = True,
    ) -> Exchange[UpstreamResponse]:
        """Sends the request to an instance; to a model's (``model``), with the time it has
        left (the attempt's timeout) in the ``x-aimesh-deadline-ms`` header."""

        async def exchange(upstream: Upstream, timeout_s: float) -> UpstreamResponse:
            address = upstream.rest
            if address is None:
                raise NotSent("the instance has no REST address")
            if outcome is not None:
                outcome.upstream = upstream.label
                outcome.version = upstream.version
            sent = headers
            if model:
                sent = [*headers, (_DEADLINE, deadline_header_value(timeout_s).encode())]
            try:
                response = await self.client.pool(address[0], address[1]).request(
                    method, target, sent, body, timeout=timeout_s
                )
            except UpstreamError as exc:
                reason = "timeout" if isinstance(exc, UpstreamTimeout) else "broken"
                self.metrics.upstream_error(upstream.label, reason)
                raise
            if response.shutting_down():
                # A draining replica refuses before doing anything: safe to send elsewhere.
                response.abandon()
                raise NotSent("the instance is shutting down")
            return response

        return exchange

    def _not_sent(self, upstream: Upstream, exc: NotSent) -> None:
        self.metrics.upstream_error(upstream.label, "refused")
        log.info("instance %s did not take a request (%s); trying another", upstream.label, exc)

    async def _relay(
        self,
        send: Send,
        response: UpstreamResponse,
        head: RequestHead,
        outcome: _Outcome,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        outcome.status = response.status
        headers = [pair for pair in response.headers if pair[0] not in _DROP_FROM_RESPONSE]
        headers.append((REQUEST_ID, head.request_id.encode()))
        if extra:
            headers.extend(extra)
        if outcome.arm is not None:
            headers.append((_ARM, outcome.arm.encode()))
        length = response.header(b"content-length")
        if response.complete or (length is not None and int(length) <= _BUFFER_LIMIT):
            # Whole before the first byte goes out: an upstream lost mid-body is still a 502.
            body = response.take() if response.complete else await response.body(self.timeout)
            if outcome.live is not None and not outcome.live.done():
                outcome.live.set_result(Answer.of(response, body))
            if length is None:
                headers.append((b"content-length", str(len(body)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": body})
            return
        outcome.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for chunk in response.chunks(self.timeout):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except BaseException:
            response.abandon()
            raise
        await send({"type": "http.response.body", "body": b""})

    # -- services under /api ----------------------------------------------------------------

    async def _service(
        self, scope: ASGIScope, receive: Receive, send: Send, head: RequestHead, outcome: _Outcome
    ) -> None:
        service = scope["path"].split("/", 3)[2]
        registry = service == "registry" or service in self.record_apis
        outcome.route = "registry" if registry else "api"
        # The service checks the caller's key again (it is forwarded unchanged), and may
        # need more than this (keys need admin on the registry) or less: one job's record
        # and result are its submitter's to read with infer, so the jobs service decides.
        reading = scope["method"] in ("GET", "HEAD")
        if reading and scope["path"].startswith("/api/jobs/"):
            self._authenticate(scope, head)
        else:
            self._check(scope, head, "read" if reading else "write")
        body = await self._body(head, receive)
        candidates = self.router.table.services(service)
        if not candidates and registry and self.registry_fallback is not None:
            candidates = (self.registry_fallback,)
        if not candidates:
            raise NoInstance(f"no {service!r} service is running", service=service)
        if candidates[0].kind == "registry":
            outcome.route = "registry"  # a record kind's API, announced by the registry
        method = scope["method"].encode()
        response = await call_upstream(
            candidates,
            self._exchange(
                b"GET" if method == b"HEAD" else method, raw_target(scope), head.forward, body,
                outcome, model=False,
            ),
            policy=self.policy,
            timeout_s=self.timeout,
            on_not_sent=self._not_sent,
        )  # fmt: skip
        await self._relay(send, response, head, outcome)

    # -- what the gateway answers itself ----------------------------------------------------

    async def _health(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        report = await self.readiness.report()
        outcome.status = 200 if report.ready else 503
        await respond(send, outcome.status, msgspec.json.encode(report), head.request_id)

    async def _live(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        outcome.status = 200
        await respond(send, 200, b'{"live":true}', head.request_id)

    async def _ready(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        ok = await self.readiness.ready()
        outcome.status = 200 if ok else 503
        answer = b'{"ready":true}' if ok else b'{"ready":false}'
        await respond(send, outcome.status, answer, head.request_id)

    async def _server(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        outcome.status = 200
        await respond(send, 200, _SERVER_METADATA, head.request_id)

    async def _metrics(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        outcome.status = 200
        text = b"text/plain; version=0.0.4; charset=utf-8"
        await respond(send, 200, self.metrics.render(), head.request_id, text)

    async def _breakers(
        self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes
    ) -> None:
        outcome.status = 200
        await respond(send, 200, breakers_report(self.core.resilience), head.request_id)

    async def _openapi(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        services = self.router.table.api_services()
        if "registry" not in services and self.registry_fallback is not None:
            services["registry"] = self.registry_fallback
        document = await self.openapi.render(
            {name: upstream.label for name, upstream in services.items()},
            lambda name: self._fetch_openapi(services[name]),
        )
        outcome.status = 200
        await respond(send, 200, document, head.request_id)

    async def _fetch_openapi(self, source: Upstream) -> bytes:
        assert source.rest is not None
        pool = self.client.pool(*source.rest)
        try:
            response = await pool.request(b"GET", b"/openapi.json", [], b"", timeout=self.timeout)
        except NotSent as exc:
            raise UpstreamError(f"cannot reach the {source.name} service") from exc
        body = await response.body(self.timeout)
        if response.status != 200:
            raise UpstreamError(f"{source.name} answered {response.status} for /openapi.json")
        return body

    async def _docs(self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes) -> None:
        outcome.status = 200
        page = swagger_page("aimesh gateway")
        await respond(send, 200, page, head.request_id, b"text/html; charset=utf-8")

    async def _docs_asset(
        self, send: Send, head: RequestHead, outcome: _Outcome, name: str
    ) -> None:
        asset = docs_asset(name)  # only names of a fixed list: never a path on disk
        if asset is None:
            raise RouteNotFound(f"no docs asset {name!r}")
        outcome.status = 200
        await respond(send, 200, asset.body, head.request_id, asset.content_type, asset.headers)

    async def _aggregate(
        self, send: Send, head: RequestHead, outcome: _Outcome, body: bytes
    ) -> None:
        request = aggregate.parse_aggregate(body)
        deadline = self.core.deadline(head.deadline)
        headers = [(b"content-type", JSON), *head.forward_tracing, *head.forward_credentials]
        results = await asyncio.gather(
            *(self._aggregate_one(m, request.body, headers, deadline) for m in request.members)
        )
        merged = aggregate.merge(
            {m.label: r for m, r in zip(request.members, results, strict=True)}
        )
        outcome.status = 200
        await respond(send, 200, merged, head.request_id)

    async def _aggregate_one(
        self,
        member: aggregate.Member,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        deadline: Deadline | None,
    ) -> aggregate.Outcome:
        try:
            target = (await self.core.plan(member.name, member.version, headers)).target
            path = model_path(member.name, target.version, b"/infer")
            response = await self.core.call(
                "infer",
                target,
                self._exchange(b"POST", path, headers, body, None),
                kind=_HTTP,
                on_not_sent=self._not_sent,
                deadline=deadline,
            )
            answer = response.take() if response.complete else await response.body(self.timeout)
            return aggregate.outcome_of(response.status, response.header(b"content-type"), answer)
        except AimeshError as exc:
            return aggregate.failure_of(exc, status_of(exc))

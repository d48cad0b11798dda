"""The gateway's gRPC adapter: ``inference.GRPCInferenceService`` in front of every model.

``ModelInfer`` goes to the chosen instance's REST port, transcoded
(:mod:`aimesh.gateway.transcode`): the request's tensors travel as OIP binary data both
ways, so nothing is lost, and the instance's REST path costs far less CPU than a second
gRPC hop (measured: about a third less per call, gateway and model together).
``ModelMetadata`` and ``ModelReady`` (and ``ModelInfer`` to an instance without a REST
address) are forwarded as raw bytes to its gRPC address. Requests are parsed only to read
the model's name and version. A call's deadline goes on: as the gRPC deadline of a raw
forward, as ``x-aimesh-deadline-ms`` over REST (the time the attempt has left, never
beyond the gateway's upstream timeout).

Model calls are planned and run by the core (:class:`~aimesh.gateway.core.ModelCore`) as
REST's are: the traffic policy's arm goes back in the initial metadata
(``x-aimesh-rollout-arm``); a failed ``ModelInfer`` goes to its fallback by the same rules
(a canary's candidate to its alias, a route's declared fallback), the answer marked in the
initial metadata (``x-aimesh-fallback``); a shadow policy's share of ``ModelInfer`` calls
is copied to the shadow version (:class:`~aimesh.gateway.shadow.Shadows`) and compared.
``ServerLive``, ``ServerReady`` and ``ServerMetadata`` are answered by the gateway, open
(no key needed) as on REST. An upstream's error keeps its code and message; the gateway's
own errors map by the one table :data:`aimesh.protocol.grpc.GRPC_STATUS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from aimesh.auth import IDENTITY_HEADER, Keyring, key_from_headers
from aimesh.errors import (
    AimeshError,
    DeadlineExceeded,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from aimesh.gateway._asgi import model_path
from aimesh.gateway.core import CallKind, ModelCore
from aimesh.gateway.headers import new_request_id, traceparent_for, valid_traceparent
from aimesh.gateway.http1 import HttpClient
from aimesh.gateway.instances import InstancePolicy, Upstream
from aimesh.gateway.metrics import GATEWAY, GatewayMetrics
from aimesh.gateway.routing import Router, Target
from aimesh.gateway.shadow import Answer, Shadows, rest_copy
from aimesh.gateway.transcode import (
    error_of,
    infer_response,
    rest_headers,
    rest_request,
    static_response,
)
from aimesh.gateway.upstream import Exchange, NotSent
from aimesh.protocol import grpc as pb
from aimesh.resilience import (
    DEADLINE_HEADER,
    FALLBACK_HEADER,
    Deadline,
    Fallback,
    Outcome,
    classify_exception,
    deadline_header_value,
    fallback_header_value,
)
from aimesh.rest import Readiness, retry_after, status_of
from aimesh.rollouts import ARM_HEADER, FigureBook, OutcomeClass

__all__ = ["GrpcGateway"]

SERVICE = "inference.GRPCInferenceService"
log = logging.getLogger("aimesh.gateway.grpc")
_DEADLINE = DEADLINE_HEADER.encode()

# Said by gRPC when no connection could be made: the request never left.
_NOT_CONNECTED = ("failed to connect", "connection refused", "(shutting_down)")


FAILURE, IGNORED = Outcome.FAILURE, Outcome.IGNORED
# The live figures' class of a call by its gRPC status (any other: the client's doing).
_CLASS_OF: dict[str, OutcomeClass] = {
    "OK": "ok",
    "DEADLINE_EXCEEDED": "timeout",
    "UNAVAILABLE": "connection",
    "INTERNAL": "upstream",
    "UNKNOWN": "upstream",
    "DATA_LOSS": "upstream",
    "RESOURCE_EXHAUSTED": "upstream",
}


class _UpstreamStatus(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _judge_error(exc: BaseException) -> Outcome:
    """A failed call's outcome: the instance's fault (a server-side gRPC status, a 5xx
    answered over REST) or the caller's (any other status: ignored)."""
    if isinstance(exc, _UpstreamStatus):
        return FAILURE if _CLASS_OF.get(exc.code.name, "client") != "client" else IGNORED
    if isinstance(exc, DeadlineExceeded):
        return IGNORED  # the caller's own deadline, as classify_exception says
    if isinstance(exc, AimeshError) and not isinstance(exc, UpstreamError):
        return FAILURE if status_of(exc) >= 500 else IGNORED
    return classify_exception(exc)


_GRPC: CallKind[bytes] = CallKind(classify_error=_judge_error)

Context: TypeAlias = "aio.ServicerContext[Any, Any]"


class GrpcGateway:
    """Serves OIP v2 over gRPC by forwarding model calls to the chosen instance."""

    def __init__(
        self,
        *,
        router: Router,
        client: HttpClient,
        policy: InstancePolicy,
        keyring: Keyring,
        metrics: GatewayMetrics,
        upstream_timeout_s: float,
        max_message_bytes: int,
        readiness: Readiness,
        core: ModelCore | None = None,
        figures: FigureBook | None = None,
        shadows: Shadows | None = None,
    ) -> None:
        self.router = router
        self.client = client
        self.policy = policy
        self.core = core or ModelCore(router, policy, call_timeout_s=upstream_timeout_s)
        self.figures = figures or FigureBook("gateway")
        self.shadows = shadows or Shadows(self.core, self.figures)
        """Shadow copies of ModelInfer calls (shared with the REST adapter)."""
        self.keyring = keyring
        self.metrics = metrics
        self.timeout = upstream_timeout_s
        self.readiness = readiness
        self._channel_options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, aio.Channel] = {}
        self._calls: dict[tuple[str, str], aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # referenced until done

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a ``grpc.aio`` server."""

        def raw(method: str) -> grpc.RpcMethodHandler:
            async def handle(request: bytes, context: Context) -> bytes:
                return await self._model_call(method, request, context)

            return grpc.unary_unary_rpc_method_handler(handle)

        def typed(answer: Callable[[Any, Context], Any], req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                answer,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": typed(self._live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": typed(self._ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ServerMetadata": typed(
                    self._metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelInfer": raw("ModelInfer"),
                "ModelMetadata": raw("ModelMetadata"),
                "ModelReady": raw("ModelReady"),
            },
        )

    # -- answered by the gateway ------------------------------------------------------------

    async def _live(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=await self.readiness.ready())

    async def _metadata(self, request: Any, context: Context) -> Any:
        # Open, like health and REST's GET /v2: nothing in it a caller could misuse.
        return pb.ServerMetadataResponse(
            name="aimesh-gateway", version="0.1.0", extensions=["binary_tensor_data"]
        )

    # -- forwarded --------------------------------------------------------------------------

    async def _model_call(self, method: str, request: bytes, context: Context) -> bytes:
        started = time.perf_counter()
        route = _ROUTES[method]
        seen = _Seen()
        name = ""
        status = "OK"
        metadata: list[tuple[str, str]] = []
        live: asyncio.Future[Answer | None] | None = None
        try:
            metadata = self._check(context)
            message, name, version = _parse(method, request)
            deadline = self.core.deadline(left_s=context.time_remaining())
            plan = await self.core.plan(name, version, _as_headers(context))
            target = plan.target
            infer = method == "ModelInfer"
            if infer:
                # Counted for the version planned, even if no instance of it is reached (an
                # open circuit); the instance that answers says its own.
                seen.model, seen.version = name, target.served
            if target.version != version:  # an alias: name the version the instance knows
                _set_target(method, message, name, target.version or "")
                request = message.SerializeToString()
            # ModelInfer goes over REST where it can (see the module's docstring).
            rest = rest_request(message) if infer else None
            if rest is not None and plan.shadow is not None:
                live = self._copy(name, plan.shadow, rest, metadata)
            fallback = self.core.fallback_for(name, plan) if infer else None
            initial = [] if plan.arm is None else [(ARM_HEADER, plan.arm)]
            exchange = self._exchange(method, request, rest, target, metadata, seen, live)
            try:
                answer = await self.core.call(
                    route, target, exchange, kind=_GRPC, on_not_sent=self._not_sent,
                    deadline=deadline,
                )  # fmt: skip
            except (AimeshError, _UpstreamStatus) as exc:
                if fallback is None or not self.core.falls_back(deadline, exc, _GRPC):
                    raise
                log.info("%s failed (%s); its fallback answers", name, exc)
                seen.failure = "timeout" if _timed_out(exc) else "upstream"
                seen.fallback = True
                answer = await self._fall_back(method, message, rest, name, fallback, metadata,
                                               deadline)  # fmt: skip
                initial.append((FALLBACK_HEADER, fallback_header_value(fallback)))
            if initial:
                await context.send_initial_metadata(initial)
            return answer
        except _UpstreamStatus as exc:
            status = exc.code.name
            await context.abort(exc.code, exc.details)
            raise  # abort raises; this line is for the type checker
        except AimeshError as exc:
            status = pb.grpc_status_of(exc).name
            await _abort(context, exc, pb.request_id_in(metadata or context.invocation_metadata()))
            raise
        except Exception:
            status = grpc.StatusCode.INTERNAL.name
            request_id = pb.request_id_in(metadata or context.invocation_metadata())
            log.exception("request %s failed unexpectedly", request_id,
                          extra={"request_id": request_id})  # fmt: skip
            await context.abort(grpc.StatusCode.INTERNAL, pb.internal_details(request_id))
            raise
        finally:
            if live is not None and not live.done():
                live.set_result(None)  # no answer to compare the shadow's with
            elapsed = time.perf_counter() - started
            self.metrics.observe(route, "grpc", seen.upstream, status, elapsed)
            if seen.model is not None and seen.version is not None:
                failure = seen.failure or _CLASS_OF.get(status, "client")
                self.figures.count(
                    seen.model, seen.version, failure, elapsed, fallback=seen.fallback
                )

    def _exchange(
        self,
        method: str,
        request: bytes,
        rest: tuple[bytes, int | None] | None,
        target: Target,
        metadata: list[tuple[str, str]],
        seen: _Seen | None,
        live: asyncio.Future[Answer | None] | None,
    ) -> Exchange[bytes]:
        """Sends the call to an instance of ``target``: over REST when it is a ModelInfer
        (``rest``: its transcoded body) and the instance has a REST port, else as it came;
        says where it went in ``seen``, and hands the answer to ``live`` (a shadow's)."""
        path = model_path(target.model, target.version, b"/infer")

        async def exchange(upstream: Upstream, timeout_s: float) -> bytes:
            if seen is not None:
                seen.upstream = upstream.label
                seen.version = upstream.version
            if rest is not None and upstream.rest is not None:
                body, length = rest
                return await self._infer_over_rest(
                    upstream, path, body, length, metadata, timeout_s, live
                )
            return await self._send(upstream, method, request, metadata, timeout_s)

        return exchange

    async def _fall_back(
        self,
        method: str,
        message: Any,
        rest: tuple[bytes, int | None] | None,
        name: str,
        fallback: Fallback,
        metadata: list[tuple[str, str]],
        deadline: Deadline | None,
    ) -> bytes:
        """The answer of ``name``'s fallback to a failed ModelInfer, as REST's: a static
        answer, or the call sent to the fallback's version or model."""
        if fallback.outputs is not None:
            return static_response(name, fallback)
        target = await self.core.fallback_target(name, fallback)
        _set_target(method, message, target.model, target.version or "")
        request = message.SerializeToString()
        exchange = self._exchange(method, request, rest, target, metadata, None, None)
        return await self.core.call(
            "infer", target, exchange, kind=_GRPC, on_not_sent=self._not_sent, deadline=deadline
        )

    def _copy(
        self,
        name: str,
        shadow: Target,
        rest: tuple[bytes, int | None],
        metadata: list[tuple[str, str]],
    ) -> asyncio.Future[Answer | None] | None:
        """Send a shadow copy of a ModelInfer (its transcoded body, as REST sends one)."""
        path = model_path(name, shadow.version, b"/infer")
        headers = rest_headers(metadata, rest[1])
        return self.shadows.copy(name, shadow, rest_copy(self.client, path, headers, rest[0]))

    def _check(self, context: Context) -> list[tuple[str, str]]:
        """Authorize the call; return the metadata to forward (request id, trace context, and
        the caller's credentials unchanged: the model service checks them again)."""
        api_key = authorization = request_id = traceparent = tracestate = on_behalf = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-api-key":
                api_key = value
            elif key == "authorization":
                authorization = value
            elif key == IDENTITY_HEADER:
                on_behalf = value
            elif key == "x-request-id":
                request_id = value
            elif key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        presented = key_from_headers(
            api_key if isinstance(api_key, str) else None,
            authorization if isinstance(authorization, str) else None,
        )
        self.keyring.check(
            presented,
            "infer",
            client=pb.peer_host(context.peer()),
            on_behalf=on_behalf if isinstance(on_behalf, str) else None,
        )
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            request_id = new_request_id()
        if not isinstance(traceparent, str) or not valid_traceparent(traceparent):
            traceparent = traceparent_for(request_id)
        forward = [("x-request-id", request_id), ("traceparent", traceparent)]
        if isinstance(tracestate, str):
            forward.append(("tracestate", tracestate))
        if presented is not None:
            forward.append(("x-api-key", presented))
        if isinstance(on_behalf, str):
            forward.append((IDENTITY_HEADER, on_behalf))
        return forward

    async def _send(
        self,
        upstream: Upstream,
        method: str,
        request: bytes,
        metadata: list[tuple[str, str]],
        timeout: float,
    ) -> bytes:
        address = upstream.grpc_address
        if not address:
            raise NotSent("the instance has no gRPC address")
        try:
            response: bytes = await self._call(address, method)(
                request, timeout=timeout, metadata=metadata
            )
        except aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE and any(
                sign in details.lower() for sign in _NOT_CONNECTED
            ):
                raise NotSent(details) from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                reason = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "broken"
                self.metrics.upstream_error(upstream.label, reason)
            raise _UpstreamStatus(exc.code(), details) from exc
        return response

    async def _infer_over_rest(
        self,
        upstream: Upstream,
        path: bytes,
        body: bytes,
        header_length: int | None,
        metadata: list[tuple[str, str]],
        timeout: float,
        live: asyncio.Future[Answer | None] | None = None,
    ) -> bytes:
        """ModelInfer through the instance's REST port: cheaper than a second gRPC hop; the
        time the call has left goes in the ``x-aimesh-deadline-ms`` header. The answer, as
        the instance gave it, goes to ``live`` (a shadow copy's to compare with)."""
        assert upstream.rest is not None
        headers = rest_headers(metadata, header_length)
        headers.append((_DEADLINE, deadline_header_value(timeout).encode()))
        pool = self.client.pool(*upstream.rest)
        try:
            response = await pool.request(b"POST", path, headers, body, timeout=timeout)
            answer = response.take() if response.complete else await response.body(timeout)
        except UpstreamError as exc:
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "broken"
            self.metrics.upstream_error(upstream.label, reason)
            raise
        if response.status != 200:
            error = error_of(response.status, answer)
            if error.code == "shutting_down":
                raise NotSent(error.message)
            raise error
        whole = Answer.of(response, answer)
        serialized = infer_response(answer, whole.header_length)
        if live is not None and not live.done():
            live.set_result(whole)
        return serialized

    def _call(self, address: str, method: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
        call = self._calls.get((address, method))
        if call is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = aio.insecure_channel(
                    address, options=self._channel_options
                )
            # No serializers: bytes in, bytes out.
            call = self._calls[(address, method)] = channel.unary_unary(f"/{SERVICE}/{method}")
        return call

    def _not_sent(self, upstream: Upstream, exc: NotSent) -> None:
        self.metrics.upstream_error(upstream.label, "refused")

    def forget(self, upstream: Upstream) -> None:
        """Close the channel of an instance that left."""
        address = upstream.grpc_address
        channel = self._channels.pop(address, None) if address else None
        if channel is not None:
            for key in [k for k in self._calls if k[0] == address]:
                del self._calls[key]
            task = asyncio.get_running_loop().create_task(channel.close(grace=1.0))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = list(self._channels.values()), {}
        self._calls.clear()
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()


_ROUTES = {"ModelInfer": "infer", "ModelMetadata": "metadata", "ModelReady": "ready"}
_REQUESTS: dict[str, Any] = {
    "ModelInfer": pb.ModelInferRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelReady": pb.ModelReadyRequest,
}


def _as_headers(context: Context) -> list[tuple[bytes, bytes]]:
    """The call's text metadata as HTTP headers (names are lower case in both)."""
    return [
        (key.encode("latin-1"), value.encode("utf-8"))
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str)
    ]


def _parse(method: str, request: bytes) -> tuple[Any, str, str | None]:
    try:
        message = _REQUESTS[method].FromString(request)
    except Exception as exc:  # protobuf's DecodeError, whichever implementation is in use
        raise InvalidRequest(f"cannot parse the {method} request: {exc}") from exc
    if method == "ModelInfer":
        name, version = message.model_name, message.model_version
    else:
        name, version = message.name, message.version
    if not name:
        raise InvalidRequest("name a model")
    return message, name, version or None


def _set_target(method: str, message: Any, model: str, version: str) -> None:
    """Name ``model`` at ``version`` in the request ``message`` (the instance's own terms)."""
    if method == "ModelInfer":
        message.model_name, message.model_version = model, version
    else:
        message.name, message.version = model, version


def _timed_out(exc: BaseException) -> bool:
    """Whether a failed call failed for want of time (a fallback then counts a timeout)."""
    if isinstance(exc, _UpstreamStatus):
        return exc.code is grpc.StatusCode.DEADLINE_EXCEEDED
    return isinstance(exc, UpstreamTimeout)


class _Seen:
    """What the metrics and the live figures say of one call; filled in as it goes."""

    __slots__ = ("failure", "fallback", "model", "upstream", "version")

    def __init__(self) -> None:
        self.upstream = GATEWAY
        """The instance it went to last."""
        self.model: str | None = None
        """The model a ModelInfer went to (counted in the live figures; other calls not)."""
        self.version: str | None = None
        """The version of the instance it went to last."""
        self.failure: OutcomeClass | None = None
        """How the call failed when a fallback answered instead."""
        self.fallback = False


async def _abort(context: Context, exc: AimeshError, request_id: str) -> None:
    status = pb.grpc_status_of(exc)
    if status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE) or exc.__cause__:
        log.warning("request %s failed: %s (%s)", request_id, exc.message, exc.code,
                    exc_info=exc, extra={"request_id": request_id})  # fmt: skip
    wait = retry_after(exc)  # rate limits, throttled keys: when to try again
    if wait is not None:
        context.set_trailing_metadata((("retry-after", wait),))
    await context.abort(status, pb.grpc_details(exc, request_id))


async def start_grpc(
    gateway: GrpcGateway, host: str, port: int, *, max_message_bytes: int
) -> tuple[aio.Server, int]:
    """Serve ``gateway`` on ``host:port`` (0: a free port); return the server and its port."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    server.add_generic_rpc_handlers((gateway.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server, bound

"""The gateway's gRPC adapter: ``inference.GRPCInferenceService`` in front of every model.

``ModelInfer`` goes to the chosen instance's REST port, transcoded: the request's tensors
travel as OIP binary data both ways, so nothing is lost, and the instance's REST path costs
far less CPU than a second gRPC hop (measured: about a third less per call, gateway and
model together). ``ModelMetadata`` and ``ModelReady`` (and ``ModelInfer`` to an instance
without a REST address) are forwarded as raw bytes to its gRPC address. Requests are parsed
only to read the model's name and version. A call's deadline goes on: as the gRPC
deadline of a raw forward, as ``x-aimesh-deadline-ms`` over REST (the time the attempt has
left, never beyond the gateway's upstream timeout). ``ServerLive``, ``ServerReady`` and
``ServerMetadata`` are answered by the gateway, open (no key needed) as on REST. An
upstream's error keeps its code and message; the gateway's own errors map by the one table
:data:`aimesh.protocol.grpc.GRPC_STATUS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from aimesh.auth import IDENTITY_HEADER, Keyring, key_from_headers
from aimesh.errors import (
    AimeshError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    error_from_body,
    foreign_message,
)
from aimesh.gateway._asgi import model_path
from aimesh.gateway.core import CallKind, ModelCore
from aimesh.gateway.headers import new_request_id, traceparent_for, valid_traceparent
from aimesh.gateway.http1 import HttpClient
from aimesh.gateway.instances import InstancePolicy, Upstream
from aimesh.gateway.metrics import GATEWAY, GatewayMetrics
from aimesh.gateway.routing import Router
from aimesh.gateway.upstream import NotSent
from aimesh.protocol import grpc as pb
from aimesh.protocol import rest_codec
from aimesh.resilience import DEADLINE_HEADER, Outcome, classify_exception, deadline_header_value
from aimesh.rest import Readiness, retry_after, status_of
from aimesh.rollouts import ARM_HEADER, FigureBook, OutcomeClass

__all__ = ["GrpcGateway"]

SERVICE = "inference.GRPCInferenceService"
log = logging.getLogger("aimesh.gateway.grpc")
_HEADER_LENGTH = b"inference-header-content-length"
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
    ) -> None:
        self.router = router
        self.client = client
        self.policy = policy
        self.core = core or ModelCore(router, policy, call_timeout_s=upstream_timeout_s)
        self.figures = figures or FigureBook("gateway")
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
        upstream_label = GATEWAY
        answered: str | None = None  # the version of the instance it went to last
        name = ""
        status = "OK"
        metadata: list[tuple[str, str]] = []
        try:
            metadata = self._check(context)
            message, name, version = _parse(method, request)
            plan = await self.core.plan(name, version, _as_headers(context))
            target = plan.target
            if plan.arm is not None:
                await context.send_initial_metadata(((ARM_HEADER, plan.arm),))
            if target.version != version:  # an alias: name the version the instance knows
                _set_version(method, message, target.version or "")
                request = message.SerializeToString()
            deadline = self.core.deadline(left_s=context.time_remaining())

            # ModelInfer goes over REST where it can (see the module's docstring).
            rest = _rest_request(message) if method == "ModelInfer" else None
            path = model_path(name, target.version, b"/infer")

            async def exchange(upstream: Upstream, timeout_s: float) -> bytes:
                nonlocal upstream_label, answered
                upstream_label = upstream.label
                answered = upstream.version
                if rest is not None and upstream.rest is not None:
                    return await self._infer_over_rest(upstream, path, *rest, metadata, timeout_s)
                return await self._send(upstream, method, request, metadata, timeout_s)

            return await self.core.call(
                route, target, exchange, kind=_GRPC, on_not_sent=self._not_sent,
                deadline=deadline,
            )  # fmt: skip
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
            elapsed = time.perf_counter() - started
            self.metrics.observe(route, "grpc", upstream_label, status, elapsed)
            if method == "ModelInfer" and answered is not None:
                self.figures.count(name, answered, _CLASS_OF.get(status, "client"), elapsed)

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
    ) -> bytes:
        """ModelInfer through the instance's REST port: cheaper than a second gRPC hop; the
        time the call has left goes in the ``x-aimesh-deadline-ms`` header."""
        assert upstream.rest is not None
        headers = [(key.encode(), value.encode()) for key, value in metadata]
        headers.append((_DEADLINE, deadline_header_value(timeout).encode()))
        if header_length is None:
            headers.append((b"content-type", b"application/json"))
        else:
            headers.append((b"content-type", b"application/octet-stream"))
            headers.append((_HEADER_LENGTH, str(header_length).encode()))
        pool = self.client.pool(*upstream.rest)
        try:
            response = await pool.request(b"POST", path, headers, body, timeout=timeout)
            answer = response.take() if response.complete else await response.body(timeout)
        except UpstreamError as exc:
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "broken"
            self.metrics.upstream_error(upstream.label, reason)
            raise
        if response.status != 200:
            error = _error_of(response.status, answer)
            if error.code == "shutting_down":
                raise NotSent(error.message)
            raise error
        length = response.header(_HEADER_LENGTH)
        try:
            decoded = rest_codec.decode_response(
                answer, header_length=int(length) if length is not None else None
            )
        except (InvalidRequest, ValueError) as exc:
            raise UpstreamError(
                f"the instance answered an unreadable response: {foreign_message(exc)}"
            ) from exc
        serialized: bytes = pb.response_to_pb(decoded).SerializeToString()
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


def _rest_request(message: Any) -> tuple[bytes, int | None]:
    """The OIP REST body for a ModelInferRequest: tensors as binary data, outputs asked so."""
    request = pb.request_from_pb(message)
    # Binary both ways: exact, and no JSON number formatting on either side.
    request.parameters = {**request.parameters, "binary_data_output": True}
    return rest_codec.encode_request(request, binary=True)


def _error_of(status: int, body: bytes) -> AimeshError:
    """The error an instance answered over REST, as the class the gRPC status comes from."""
    try:
        found = json.loads(body)
        return error_from_body(str(found["code"]), str(found["error"]))
    except (ValueError, KeyError, TypeError):
        return UpstreamError(f"the instance answered HTTP {status}")


def _set_version(method: str, message: Any, version: str) -> None:
    if method == "ModelInfer":
        message.model_version = version
    else:
        message.version = version


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

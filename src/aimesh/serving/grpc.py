"""The model service's gRPC adapter: ``inference.GRPCInferenceService`` over :class:`DataPlane`.

Each method converts the message, calls the data plane, converts back. Errors become gRPC
status codes from :data:`GRPC_STATUS`; the same codes the REST adapter maps to HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from aimesh.auth import IDENTITY_HEADER, Keyring, key_from_headers, retry_after
from aimesh.errors import AimeshError, InvalidRequest, NotFound, RateLimited, Unavailable
from aimesh.protocol import grpc as pb
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.metrics import ServingMetrics

GRPC_STATUS: dict[str, grpc.StatusCode] = {
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "auth_throttled": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "request_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""Codes whose status is not the one of their family (see :func:`status_of`)."""

T = TypeVar("T")


def status_of(exc: AimeshError) -> grpc.StatusCode:
    """The gRPC status for an error: by code, else by family."""
    if exc.code in GRPC_STATUS:
        return GRPC_STATUS[exc.code]
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def _answer(context: aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except AimeshError as exc:
        if isinstance(exc, RateLimited):
            context.set_trailing_metadata((("retry-after", retry_after(exc)),))
        await context.abort(status_of(exc), f"{exc.message} ({exc.code})")
        raise  # abort raises; this line is for the type checker


class InferenceServicer(pb.GRPCInferenceServiceServicer):
    """Open Inference Protocol v2 over gRPC for one data plane."""

    def __init__(self, plane: DataPlane, metrics: ServingMetrics, keyring: Keyring) -> None:
        self.plane = plane
        self.metrics = metrics
        self.keyring = keyring

    def _check(self, context: Any) -> None:
        """Raise unless the call's key may infer (health and server liveness stay open)."""
        metadata = dict(context.invocation_metadata() or ())
        api_key, authorization = metadata.get("x-api-key"), metadata.get("authorization")
        on_behalf = metadata.get(IDENTITY_HEADER)
        self.keyring.check(
            key_from_headers(
                api_key if isinstance(api_key, str) else None,
                authorization if isinstance(authorization, str) else None,
            ),
            "infer",
            client=pb.peer_host(context.peer()),
            on_behalf=on_behalf if isinstance(on_behalf, str) else None,
        )

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self._check(context)
            ready = self.plane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)

        return await _answer(context, call)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self._check(context)
            return pb.metadata_to_pb(self.plane.server_metadata())

        return await _answer(context, call)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            self._check(context)
            meta = self.plane.model_metadata(request.name, request.version or None)
            return pb.model_metadata_to_pb(meta)

        return await _answer(context, call)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        status = "error"
        version = request.model_version or "?"

        async def call() -> Any:
            nonlocal status, version
            try:
                self._check(context)
                response = await self.plane.infer(
                    request.model_name, request.model_version or None, pb.request_from_pb(request)
                )
            except AimeshError as exc:
                status = exc.code
                raise
            status = "ok"
            version = response.model_version or version
            return pb.response_to_pb(response)

        try:
            return await _answer(context, call)
        finally:
            self.metrics.observe(
                request.model_name, version, "grpc", status, time.perf_counter() - started
            )


async def start_grpc_server(
    plane: DataPlane,
    metrics: ServingMetrics,
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    keyring: Keyring,
) -> tuple[aio.Server, int]:
    """Start serving gRPC on ``host:port`` (0: a free port); return the server and its port."""
    server = aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    pb.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(plane, metrics, keyring), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound

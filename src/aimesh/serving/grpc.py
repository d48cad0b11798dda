"""The model service's gRPC adapter: ``inference.GRPCInferenceService`` over :class:`DataPlane`.

Each method converts the message, calls the data plane, converts back. A ``ModelInfer``
call's own gRPC deadline is the inference's deadline. Errors become gRPC status codes by
the one table :data:`aimesh.protocol.grpc.GRPC_STATUS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from aimesh.auth import IDENTITY_HEADER, Keyring, key_from_headers
from aimesh.errors import AimeshError
from aimesh.protocol import grpc as pb
from aimesh.rest import retry_after
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.metrics import ServingMetrics

T = TypeVar("T")
log = logging.getLogger("aimesh.serving.grpc")
# Statuses that say the service failed (not the request): logged with the whole story.
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}
)


async def _answer(context: aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except AimeshError as exc:
        request_id = pb.request_id_in(context.invocation_metadata())
        status = pb.grpc_status_of(exc)
        if status in _SERVER_FAULTS or exc.__cause__ is not None:
            log.warning("request %s failed: %s (%s)", request_id, exc.message, exc.code,
                        exc_info=exc, extra={"request_id": request_id})  # fmt: skip
        wait = retry_after(exc)
        if wait is not None:
            context.set_trailing_metadata((("retry-after", wait),))
        await context.abort(status, pb.grpc_details(exc, request_id))
        raise  # abort raises; this line is for the type checker
    except Exception:
        request_id = pb.request_id_in(context.invocation_metadata())
        log.exception("request %s failed unexpectedly", request_id,
                      extra={"request_id": request_id})  # fmt: skip
        await context.abort(grpc.StatusCode.INTERNAL, pb.internal_details(request_id))
        raise


class InferenceServicer(pb.GRPCInferenceServiceServicer):
    """Open Inference Protocol v2 over gRPC for one data plane."""

    def __init__(self, plane: DataPlane, metrics: ServingMetrics, keyring: Keyring) -> None:
        self.plane = plane
        self.metrics = metrics
        self.keyring = keyring

    def _check(self, context: Any) -> None:
        """Raise unless the call's key may infer (health and server metadata stay open, as
        on REST: ``ServerLive``, ``ServerReady``, ``ServerMetadata`` check nothing)."""
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
        return pb.metadata_to_pb(self.plane.server_metadata())

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
                deadline = self.plane.deadline(left_s=context.time_remaining())
                response = await self.plane.infer(
                    request.model_name, request.model_version or None, pb.request_from_pb(request),
                    deadline,
                )  # fmt: skip
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

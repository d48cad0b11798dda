"""The model service's core: OIP v2 operations on the hosted model, with no HTTP or gRPC.

The REST and gRPC adapters decode a request, call :class:`DataPlane`, encode the answer;
they do nothing else. Limits live here so both protocols share them.
"""

from __future__ import annotations

import asyncio

from aimesh.errors import (
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    ShuttingDown,
    VersionNotFound,
)
from aimesh.protocol import InferenceRequest, InferenceResponse, ModelMetadata, ServerMetadata
from aimesh.serving.host import ModelHost
from aimesh.serving.model import ServedModel

SERVER_NAME = "aimesh"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]


class DataPlane:
    """Answers the Open Inference Protocol for the one model its host serves."""

    def __init__(self, host: ModelHost, *, max_concurrency: int, request_timeout_s: float) -> None:
        self.host = host
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self._in_flight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- health and metadata ----------------------------------------------------------------

    def live(self) -> bool:
        """The process is up."""
        return True

    def ready(self) -> bool:
        """A model is loaded and the service is not draining."""
        return self.host.ready and not self._draining

    def server_metadata(self) -> ServerMetadata:
        """``GET /v2``."""
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, list(EXTENSIONS))

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served model, if ``name`` (and ``version``, when given) are the ones served."""
        if name != self.host.ref.name:
            raise ModelNotFound(
                f"this service serves {self.host.ref.name!r}, not {name!r}", name=name
            )
        model = self.host.current
        if version is not None and version != model.version_label:
            raise VersionNotFound(
                f"this service serves {name} version {model.version_label}, not {version}",
                model=name,
                version=version,
            )
        return model

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether that model (version) is being served and the service is ready."""
        self.model(name, version)
        return self.ready()

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """``GET /v2/models/{name}[/versions/{v}]``."""
        model = self.model(name, version)
        return ModelMetadata(
            name=model.name,
            platform=model.version.framework,
            versions=[model.version_label],
            inputs=list(model.signature.inputs),
            outputs=list(model.signature.outputs),
            parameters={"ref": str(self.host.ref)},
        )

    # -- inference --------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, request: InferenceRequest
    ) -> InferenceResponse:
        """Run one inference within the concurrency limit and the request timeout."""
        if self._draining:
            raise ShuttingDown("the service is shutting down; retry on another replica")
        if self._in_flight >= self.max_concurrency:
            raise Overloaded(
                f"{self._in_flight} requests in flight, the limit is {self.max_concurrency}"
            )
        model = self.model(name, version)  # chosen once: a swap mid-request does not affect it
        self._in_flight += 1
        self._idle.clear()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await model.infer(request)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"no answer within {self.request_timeout_s:g}s", timeout=self.request_timeout_s
            ) from exc
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return self._in_flight

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests, wait for those in flight; False if ``timeout`` passed first."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

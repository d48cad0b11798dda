"""The model service's core: OIP v2 operations on the hosted model, with no HTTP or gRPC.

The REST and gRPC adapters decode a request, call :class:`DataPlane`, encode the answer;
they do nothing else. Limits live here so both protocols share them, the caller's deadline
among them: each adapter reads it (the ``x-aimesh-deadline-ms`` header, the gRPC call's
deadline) and the data plane refuses a request whose deadline has passed without running
the model, and waits for the model no longer than the deadline allows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aimesh.errors import (
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    ShuttingDown,
    VersionNotFound,
)
from aimesh.protocol import InferenceRequest, InferenceResponse, ModelMetadata, ServerMetadata
from aimesh.resilience import Deadline
from aimesh.serving.host import ModelHost
from aimesh.serving.model import ServedModel

SERVER_NAME = "aimesh"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]


class DataPlane:
    """Answers the Open Inference Protocol for the one model its host serves."""

    def __init__(
        self,
        host: ModelHost,
        *,
        max_concurrency: int,
        request_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        """The monotonic clock deadlines are read against (:meth:`deadline`)."""
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

    def deadline(
        self, header: str | bytes | None = None, left_s: float | None = None
    ) -> Deadline | None:
        """The caller's deadline: from its ``x-aimesh-deadline-ms`` ``header`` (REST) or the
        time ``left_s`` of its gRPC deadline; None when it set none. Raises
        :class:`~aimesh.errors.InvalidRequest` for a header that is not whole milliseconds."""
        if header is not None:
            return Deadline.from_header(header, self.clock())
        if left_s is not None:
            return Deadline.after(left_s, self.clock())
        return None

    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferenceRequest,
        deadline: Deadline | None = None,
    ) -> InferenceResponse:
        """Run one inference within the concurrency limit and the request timeout, cut to
        the caller's ``deadline``; a request whose deadline has passed is refused at once
        (:class:`DeadlineExceeded`), the model never run for it."""
        timeout = self.request_timeout_s
        if deadline is not None:
            now = self.clock()
            if deadline.expired(now):
                raise DeadlineExceeded(
                    "the caller's deadline had passed when the request came: the model was not run"
                )
            timeout = deadline.timeout(timeout, now)
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
            async with asyncio.timeout(timeout):
                return await model.infer(request)
        except TimeoutError as exc:
            if timeout < self.request_timeout_s:
                raise DeadlineExceeded(
                    f"no answer within the caller's deadline ({timeout * 1000:.0f} ms left)",
                    timeout=round(timeout, 3),
                ) from exc
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

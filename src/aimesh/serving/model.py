"""One loaded model version: its runtime, its batcher, and the checks against its signature."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from aimesh.errors import InputMismatch
from aimesh.protocol import (
    DATATYPE_TO_NUMPY,
    InferenceRequest,
    InferenceResponse,
    Signature,
    Tensor,
    TensorSpec,
    check_inputs,
    datatype_of,
)
from aimesh.registry import ModelVersion
from aimesh.runtimes import Runtime, apply_thread_cap, native_thread_pools
from aimesh.serving.batching import Batcher, BatchStats

log = logging.getLogger("aimesh.serving")


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """How a served model batches: off, or up to ``max_batch_size`` rows / ``max_latency_s``."""

    enabled: bool = True
    max_batch_size: int = 64
    max_latency_s: float = 0.002
    max_queue: int = 2048


class ServedModel:
    """A model version ready to answer; counts its requests in flight so it can be drained."""

    def __init__(
        self,
        version: ModelVersion,
        runtime: Runtime,
        *,
        batching: BatchingOptions,
        on_batch: Callable[[BatchStats], None] | None = None,
        load_seconds: float = 0.0,
    ) -> None:
        self.version = version
        self.runtime = runtime
        self.signature: Signature = version.signature or runtime.signature
        self.load_seconds = load_seconds
        # One thread per model: model calls leave the event loop, and never run twice at once.
        # OpenMP's thread count is per calling thread: the cap is applied in this one.
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"model-{version.ref}", initializer=apply_thread_cap
        )
        self.batcher: Batcher | None = None
        if batching.enabled and runtime.batchable:
            self.batcher = Batcher(
                runtime.predict,
                max_batch_size=batching.max_batch_size,
                max_latency_s=batching.max_latency_s,
                max_queue=batching.max_queue,
                executor=self._executor,
                on_batch=on_batch,
            )
        self._outputs = {spec.name: spec for spec in self.signature.outputs}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        """The model's name."""
        return self.version.model

    @property
    def version_label(self) -> str:
        """The version as the protocol writes it (``model_version``)."""
        return str(self.version.version)

    @property
    def in_flight(self) -> int:
        """Requests started on this model and not yet answered."""
        return self._in_flight

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Check the request against the signature, predict, and answer the asked outputs."""
        self._in_flight += 1
        self._idle.clear()
        try:
            inputs = self._checked_inputs(request)
            if self.batcher is not None:
                outputs = await self.batcher.submit(inputs)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, self.runtime.predict, inputs)
            return InferenceResponse(
                model_name=self.name,
                model_version=self.version_label,
                id=request.id,
                outputs=self._selected_outputs(request, outputs),
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _checked_inputs(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        check_inputs(self.name, self.signature.inputs, request.inputs)
        return {tensor.name: tensor.data for tensor in request.inputs}

    def _selected_outputs(
        self, request: InferenceRequest, outputs: Mapping[str, np.ndarray]
    ) -> list[Tensor]:
        names = list(outputs)
        if request.outputs:
            names = [o.name for o in request.outputs]
            unknown = [n for n in names if n not in outputs]
            if unknown:
                raise InputMismatch(
                    f"model {self.name} has no output(s) {unknown}; it gives {sorted(outputs)}"
                )
        return [_output_tensor(name, outputs[name], self._outputs.get(name)) for name in names]

    async def native_thread_pools(self) -> dict[str, int]:
        """The threads each native pool uses in the thread that runs this model."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, native_thread_pools)

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop batching and release the model's thread."""
        if self.batcher is not None:
            await self.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _output_tensor(name: str, array: np.ndarray, spec: TensorSpec | None) -> Tensor:
    if array.dtype.kind == "U":
        # String labels travel as BYTES: utf-8 encoded elements of an object array.
        array = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
    datatype = datatype_of(array.dtype)
    if spec is not None and spec.datatype != datatype and spec.datatype != "BYTES":
        array = array.astype(DATATYPE_TO_NUMPY[spec.datatype])
        datatype = spec.datatype
    return Tensor(name=name, datatype=datatype, data=array)


def load_model(
    version: ModelVersion,
    runtime_loader: Callable[[], Runtime],
    *,
    batching: BatchingOptions,
    on_batch: Callable[[BatchStats], None] | None = None,
) -> ServedModel:
    """Load a version with ``runtime_loader`` (blocking: call it off the event loop)."""
    started = time.perf_counter()
    runtime = runtime_loader()
    took = time.perf_counter() - started
    log.info("loaded %s in %.3fs", version.ref, took, extra={"model": version.model})
    return ServedModel(version, runtime, batching=batching, on_batch=on_batch, load_seconds=took)

"""The model service's core honours its caller's deadline: refused once passed, cut short."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from aimesh.errors import DeadlineExceeded, InvalidRequest
from aimesh.protocol import InferenceRequest, InferenceResponse, Tensor
from aimesh.resilience import Deadline
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.host import ModelRef

NOW = 50.0


class _Model:
    """A served model that counts its calls and answers when ``release`` is set."""

    name = "echo"
    version_label = "1"

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        await self.release.wait()
        return InferenceResponse(model_name="echo", model_version="1", outputs=[])


class _Host:
    def __init__(self, model: _Model) -> None:
        self.ref = ModelRef("echo", "1")
        self.current = model
        self.ready = True


def _plane(model: _Model, *, timeout_s: float = 30.0) -> DataPlane:
    host: Any = _Host(model)
    return DataPlane(host, max_concurrency=4, request_timeout_s=timeout_s, clock=lambda: NOW)


REQUEST = InferenceRequest(inputs=[Tensor(name="x", datatype="FP64", data=np.zeros((1, 1)))])


def test_the_deadline_is_read_from_the_header_or_the_grpc_time_left() -> None:
    plane = _plane(_Model())
    assert plane.deadline() is None
    assert plane.deadline(b"1500") == Deadline(NOW + 1.5)
    assert plane.deadline("0") == Deadline(NOW)
    assert plane.deadline(left_s=2.0) == Deadline(NOW + 2.0)
    with pytest.raises(InvalidRequest, match="x-aimesh-deadline-ms"):
        plane.deadline(b"1.5s")


def test_a_request_whose_deadline_passed_is_refused_without_running_the_model() -> None:
    model = _Model()
    plane = _plane(model)
    with pytest.raises(DeadlineExceeded, match="the model was not run"):
        asyncio.run(plane.infer("echo", None, REQUEST, Deadline(NOW)))
    assert model.calls == 0 and plane.in_flight == 0


def test_the_model_is_waited_for_no_longer_than_the_deadline_allows() -> None:
    model = _Model()
    plane = _plane(model)

    async def main() -> None:
        with pytest.raises(DeadlineExceeded, match="caller's deadline"):
            await plane.infer("echo", None, REQUEST, Deadline(NOW + 0.05))
        model.release.set()  # in time: answered
        assert (await plane.infer("echo", None, REQUEST, Deadline(NOW + 5.0))).outputs == []

    asyncio.run(main())
    assert model.calls == 2 and plane.in_flight == 0


def test_without_a_deadline_the_services_own_timeout_applies() -> None:
    model = _Model()
    plane = _plane(model, timeout_s=0.05)
    with pytest.raises(DeadlineExceeded, match=r"no answer within 0\.05s"):
        asyncio.run(plane.infer("echo", None, REQUEST))

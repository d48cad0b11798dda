"""What the gateway's gRPC adapter converts: a static fallback's answer, shadow answers to
compare in either REST form."""

from __future__ import annotations

import numpy as np

from aimesh.config import Fallback, StaticOutput
from aimesh.gateway.transcode import static_response
from aimesh.protocol import InferenceResponse, Tensor, rest_codec
from aimesh.protocol import grpc as pb
from aimesh.rollouts import compare_bodies


def test_a_static_fallback_answers_grpc_with_its_outputs() -> None:
    fallback = Fallback(
        outputs=[
            StaticOutput(name="label", datatype="INT64", shape=[1, 1], data=[0]),
            StaticOutput(name="scores", datatype="FP32", shape=[1, 2], data=[0.9, 0.1]),
        ]
    )
    answer = pb.ModelInferResponse.FromString(static_response("fraud", fallback))
    decoded = pb.response_from_pb(answer)
    assert (decoded.model_name, decoded.model_version) == ("fraud", "fallback")
    arrays = {t.name: t.data for t in decoded.outputs}
    np.testing.assert_array_equal(arrays["label"], np.array([[0]], dtype=np.int64))
    np.testing.assert_allclose(arrays["scores"], np.array([[0.9, 0.1]], dtype=np.float32))


def _answer(scores: list[list[float]], *, binary: bool) -> tuple[bytes, int | None]:
    response = InferenceResponse(
        model_name="m", model_version="1",
        outputs=[Tensor(name="p", datatype="FP64", data=np.array(scores))],
    )  # fmt: skip
    return rest_codec.encode_response(response, binary=binary)


def test_answers_compare_whether_json_or_binary_tensors() -> None:
    live, live_length = _answer([[0.2, 0.8], [0.6, 0.4]], binary=True)  # as gRPC transcodes
    shadow, shadow_length = _answer([[0.3, 0.7], [0.4, 0.6]], binary=False)
    assert live_length is not None and shadow_length is None
    comparison = compare_bodies(
        live, shadow, live_header_length=live_length, shadow_header_length=shadow_length
    )
    assert comparison is not None and comparison.agreed is False  # row 2's top class differs
    assert abs(comparison.mean_abs_diff - 0.15) < 1e-9
    # Binary read as JSON cannot be compared: not counted, never an agreement.
    assert compare_bodies(live, shadow) is None

"""``POST /v2/aggregate``: one OIP request to several models, all answers in one response.

Pure parts only: reading the aggregate request, building the one OIP body every model gets,
judging each upstream answer, and merging them. Inputs and answers stay raw JSON: the
gateway neither decodes tensors nor re-encodes outputs. A stand-in for the declarative
views of the ROADMAP, where this becomes one case of fan-out and merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from aimesh.errors import AimeshError, InvalidRequest
from aimesh.protocol import MODEL_NAME, VERSION_REF

__all__ = [
    "MAX_MODELS",
    "Aggregation",
    "Member",
    "ModelFailure",
    "Outcome",
    "failure_of",
    "merge",
    "outcome_of",
    "parse_aggregate",
]

MAX_MODELS = 32
"""Models one aggregate request may name."""


class _AggregateRequest(msgspec.Struct, forbid_unknown_fields=True):
    models: list[str]
    inputs: list[msgspec.Raw]
    id: str | None = None
    parameters: dict[str, msgspec.Raw] | None = None
    outputs: list[msgspec.Raw] | None = None


class _InferBody(msgspec.Struct, omit_defaults=True):
    inputs: list[msgspec.Raw]
    id: str | None = None
    parameters: dict[str, msgspec.Raw] | None = None
    outputs: list[msgspec.Raw] | None = None


class ModelFailure(msgspec.Struct, frozen=True):
    """One model's failure, reported beside the other models' answers."""

    error: str
    code: str
    status: int


Outcome = msgspec.Raw | ModelFailure
"""A model's OIP response (raw JSON), or why there is none."""


@dataclass(frozen=True, slots=True)
class Member:
    """One model of an aggregate: as the client wrote it (``label``), name and version."""

    label: str
    name: str
    version: str | None


@dataclass(frozen=True, slots=True)
class Aggregation:
    """A valid aggregate request: who to ask, and the OIP request body to send each."""

    members: tuple[Member, ...]
    body: bytes


_decoder = msgspec.json.Decoder(_AggregateRequest)
_encoder = msgspec.json.Encoder()


def parse_aggregate(body: bytes, *, max_models: int = MAX_MODELS) -> Aggregation:
    """Read an aggregate request; :class:`InvalidRequest` says what is wrong with it."""
    try:
        request = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f"invalid aggregate request: {exc}") from exc
    if not request.models:
        raise InvalidRequest("name at least one model in 'models'")
    if len(request.models) > max_models:
        raise InvalidRequest(f"at most {max_models} models per aggregate request")
    if len(set(request.models)) != len(request.models):
        raise InvalidRequest("each model may appear once in 'models'")
    members = tuple(_member(label) for label in request.models)
    infer = _InferBody(
        inputs=request.inputs,
        id=request.id,
        parameters=request.parameters,
        outputs=request.outputs,
    )
    return Aggregation(members, _encoder.encode(infer))


def _member(label: str) -> Member:
    name, at, version = label.partition("@")
    if not MODEL_NAME.fullmatch(name) or (at and not VERSION_REF.fullmatch(version)):
        raise InvalidRequest(
            f"invalid model reference {label!r}: use NAME, NAME@VERSION or NAME@ALIAS"
        )
    return Member(label, name, version or None)


def outcome_of(status: int, content_type: bytes | None, body: bytes) -> Outcome:
    """Judge one upstream answer: its JSON response, or a failure in the error-body shape."""
    if status == 200:
        if content_type is not None and not content_type.startswith(b"application/json"):
            return ModelFailure(
                "the model answered with binary tensor data, which aggregate cannot embed; "
                "ask for JSON outputs",
                "invalid_request",
                400,
            )
        try:
            return msgspec.json.decode(body, type=msgspec.Raw)
        except msgspec.DecodeError:
            return ModelFailure("the model's answer is not valid JSON", "upstream_error", 502)
    try:
        error = msgspec.json.decode(body, type=dict[str, object])
        return ModelFailure(str(error["error"]), str(error["code"]), status)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
        return ModelFailure(f"the model answered HTTP {status}", "upstream_error", status)


def failure_of(exc: AimeshError, status: int) -> ModelFailure:
    """The failure of a model the gateway could not ask (unknown, unserved, unreachable)."""
    return ModelFailure(exc.message, exc.code, status)


def merge(results: Mapping[str, Outcome]) -> bytes:
    """``{"results": {label: response or failure}, "complete": every model answered}``."""
    complete = all(not isinstance(o, ModelFailure) for o in results.values())
    return _encoder.encode({"results": results, "complete": complete})

"""The aggregate request, each model's outcome, and the merge: raw JSON in, raw JSON out."""

from __future__ import annotations

import json

import msgspec
import pytest

from aimesh.errors import InvalidRequest, NoInstance
from aimesh.gateway import Member, ModelFailure, merge, outcome_of, parse_aggregate
from aimesh.gateway.aggregate import failure_of

INPUTS = [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.5]}]


def test_one_body_for_every_model_with_the_inputs_untouched() -> None:
    raw = json.dumps(
        {
            "models": ["fraud", "churn@2", "fraud@champion"],
            "inputs": INPUTS,
            "id": "r1",
            "parameters": {"p": 1},
            "outputs": [{"name": "y"}],
        }
    ).encode()
    aggregation = parse_aggregate(raw)
    assert aggregation.members == (
        Member("fraud", "fraud", None),
        Member("churn@2", "churn", "2"),
        Member("fraud@champion", "fraud", "champion"),
    )
    assert json.loads(aggregation.body) == {
        "inputs": INPUTS,
        "id": "r1",
        "parameters": {"p": 1},
        "outputs": [{"name": "y"}],
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "invalid aggregate request"),
        (b"[]", "invalid aggregate request"),
        (b'{"inputs": []}', "invalid aggregate request"),
        (b'{"models": "fraud", "inputs": []}', "invalid aggregate request"),
        (b'{"models": [], "inputs": []}', "at least one model"),
        (b'{"models": ["a", "a"], "inputs": []}', "once"),
        (b'{"models": ["a/b"], "inputs": []}', "invalid model reference"),
        (b'{"models": ["a@"], "inputs": []}', "invalid model reference"),
        (b'{"models": ["a"], "inputs": {}}', "invalid aggregate request"),
        (b'{"models": ["a"], "inputs": [], "extra": 1}', "invalid aggregate request"),
    ],
)
def test_malformed_aggregates_are_invalid_requests(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_aggregate(body)


def test_too_many_models() -> None:
    body = json.dumps({"models": [f"m{i}" for i in range(5)], "inputs": []}).encode()
    with pytest.raises(InvalidRequest, match="at most 4"):
        parse_aggregate(body, max_models=4)


JSON = b"application/json"
NOT_JSON = ModelFailure("the model's answer is not valid JSON", "upstream_error", 502)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (200, JSON, b'{"outputs": []}', msgspec.Raw(b'{"outputs": []}')),
        (200, None, b"{}", msgspec.Raw(b"{}")),
        (200, JSON, b"{", NOT_JSON),
        (200, b"application/octet-stream", b"\x00", "invalid_request"),
        (
            400,
            JSON,
            b'{"error": "bad", "code": "shape_mismatch"}',
            ModelFailure("bad", "shape_mismatch", 400),
        ),
        (503, JSON, b"<html>", ModelFailure("the model answered HTTP 503", "upstream_error", 503)),
    ],
)
def test_each_upstream_answer_becomes_an_outcome(
    status: int, content_type: bytes | None, body: bytes, expected: object
) -> None:
    outcome = outcome_of(status, content_type, body)
    if isinstance(expected, str):
        assert isinstance(outcome, ModelFailure) and outcome.code == expected
    else:
        assert outcome == expected


def test_merge_puts_failures_beside_successes_and_says_if_complete() -> None:
    failure = failure_of(NoInstance("nothing serves ghost"), 503)
    merged = json.loads(merge({"fraud": msgspec.Raw(b'{"outputs": [1]}'), "ghost": failure}))
    assert merged == {
        "results": {
            "fraud": {"outputs": [1]},
            "ghost": {"error": "nothing serves ghost", "code": "no_instance", "status": 503},
        },
        "complete": False,
    }
    assert json.loads(merge({"fraud": msgspec.Raw(b"{}")}))["complete"] is True

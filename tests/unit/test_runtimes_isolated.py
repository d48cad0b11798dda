"""Reading the answer of an inspecting process: only a signature or an artifact error."""

from __future__ import annotations

import json

import pytest

from aimesh.errors import ArtifactError, UntrustedTypes
from aimesh.protocol import Signature
from aimesh.runtimes._isolated import MAX_ANSWER_BYTES, _signature, child_environment

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 1]}],
    "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 1]}],
}


def test_a_signature_answer_is_the_signature() -> None:
    got = _signature(json.dumps({"signature": SIGNATURE}).encode(), 0, "pickle")
    assert got == Signature.model_validate(SIGNATURE)


def test_an_artifact_error_answer_is_raised_as_its_class() -> None:
    body = {"error": "holds types that are not trusted: os.system", "code": "untrusted_types"}
    with pytest.raises(UntrustedTypes, match=r"os\.system"):
        _signature(json.dumps(body).encode(), 0, "sklearn")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"signature": {"inputs": 3}}',
        b'{"code": 1, "error": "x"}',
        b"{" + b" " * MAX_ANSWER_BYTES + b"}",
    ],
    ids=["empty", "binary", "text", "list", "bad-signature", "bad-error", "too-large"],
)
def test_anything_else_is_artifact_invalid(raw: bytes) -> None:
    with pytest.raises(ArtifactError) as caught:
        _signature(raw, 3, "pickle")
    assert caught.value.code == "artifact_invalid"
    assert "exit code 3" in caught.value.message


def test_a_child_cannot_claim_an_error_that_is_not_about_the_artifact() -> None:
    body = {"error": "you may not", "code": "forbidden"}
    with pytest.raises(ArtifactError) as caught:
        _signature(json.dumps(body).encode(), 0, "pickle")
    assert caught.value.code == "artifact_invalid"


def test_the_child_environment_keeps_only_what_python_needs() -> None:
    env = child_environment(
        {"PATH": "/bin", "PYTHONPATH": "/src", "AIMESH_REGISTRY__API_KEY": "k", "AWS_SECRET": "s"}
    )
    assert env["PATH"] == "/bin" and env["PYTHONPATH"] == "/src"
    assert "AIMESH_REGISTRY__API_KEY" not in env and "AWS_SECRET" not in env

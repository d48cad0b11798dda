"""What makes a model call async, and what an inference job's payload may say."""

from __future__ import annotations

import pytest

from aimesh.errors import InvalidRequest, JobRejected
from aimesh.gateway.deferred import AsyncRequest, InferencePayload, async_request
from aimesh.gateway.headers import RequestHead


@pytest.mark.parametrize(
    ("query", "prefer", "key"),
    [
        (b"", None, None),
        (b"async=false", None, None),
        (b"async=0&x=1", None, None),
        (b"", b"return=minimal", None),
        (b"", None, "k"),  # a key alone does not make a call async
    ],
)
def test_a_call_stays_synchronous_unless_asked(
    query: bytes, prefer: bytes | None, key: str | None
) -> None:
    assert async_request(query, prefer, key) is None


def test_the_headers_that_matter_are_read_in_the_one_pass() -> None:
    head = RequestHead.read(
        [(b"prefer", b"respond-async"), (b"idempotency-key", b"k-9"), (b"x-other", b"1")]
    )
    assert (head.prefer, head.idempotency_key) == (b"respond-async", "k-9")
    assert (b"prefer", b"respond-async") in head.forward  # passed on like any header


def test_the_query_asks_and_its_own_parameters_are_not_passed_on() -> None:
    found = async_request(b"async=TRUE&webhook=https%3A%2F%2Fh%2Fdone&verbose=1", None, "k-1")
    assert found == AsyncRequest(
        prefer=False, webhook_url="https://h/done", idempotency_key="k-1", query=b"?verbose=1"
    )


@pytest.mark.parametrize(
    "prefer", [b"respond-async", b"Respond-Async, wait=10", b"wait=5,respond-async"]
)
def test_prefer_respond_async_asks_too(prefer: bytes) -> None:
    found = async_request(b"", prefer)
    assert found is not None and found.prefer and found.query == b""


@pytest.mark.parametrize("query", [b"async=maybe", b"webhook=https://h/"])
def test_unclear_requests_are_refused(query: bytes) -> None:
    with pytest.raises(InvalidRequest):
        async_request(query, None)


def _payload(**fields: object) -> InferencePayload:
    base: dict[str, object] = {"model": "fraud", "path": "/v2/models/fraud/infer", "input": "t"}
    return InferencePayload(**{**base, **fields})  # type: ignore[arg-type]


def test_a_well_formed_payload_passes() -> None:
    payload = _payload(version="champion", path="/v2/models/fraud/versions/3/infer?x=1")
    assert payload.check() is payload


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "../etc"},
        {"version": "not a version"},
        {"path": "/v2/models/other/infer"},
        {"path": "/v2/models/fraud/infer HTTP/1.1\r\nx: y"},
        {"path": "/v2/models/fraud/inför"},
        {"path": "http://elsewhere/v2/models/fraud/infer"},
    ],
)
def test_a_payload_that_could_go_elsewhere_is_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(JobRejected):
        _payload(**fields).check()

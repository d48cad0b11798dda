"""What the gateway reads from request headers and what it forwards."""

from __future__ import annotations

import pytest

from aimesh.gateway.headers import RequestHead, traceparent_for, valid_traceparent

GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (GOOD, True),
        (GOOD.replace("-01", "-00"), True),
        ("01" + GOOD[2:], True),  # a later version keeps the same first fields
        ("ff" + GOOD[2:], False),
        (GOOD.upper(), False),
        ("00-" + "0" * 32 + "-b7ad6b7169203331-01", False),
        ("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", False),
        (GOOD[:-1], False),
        ("garbage", False),
        ("", False),
    ],
)
def test_valid_traceparent(value: str, valid: bool) -> None:
    assert valid_traceparent(value) is valid


def test_a_new_trace_takes_the_request_id_as_trace_id() -> None:
    made = traceparent_for("0af7651916cd43dd8448eb211c80319c")
    assert valid_traceparent(made) and made.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    other = traceparent_for("my-request")  # not a trace id: a random one
    assert valid_traceparent(other) and "my-request" not in other


def test_headers_forwarded_drop_hop_by_hop_and_keep_credentials() -> None:
    head = RequestHead.read(
        [
            (b"host", b"gw:8080"),
            (b"content-type", b"application/json"),
            (b"content-length", b"12"),
            (b"connection", b"keep-alive"),
            (b"x-api-key", b"secret"),
            (b"authorization", b"Bearer secret"),
            (b"x-aimesh-identity", b"alice;read"),
            (b"inference-header-content-length", b"80"),
            (b"x-request-id", b"req-7"),
            (b"traceparent", GOOD.encode()),
            (b"tracestate", b"vendor=1"),
            (b"x-aimesh-deadline-ms", b"250"),
        ]
    )
    assert head.content_length == 12
    # The deadline is read, and sent on as the time left when each call is made.
    assert head.deadline == b"250"
    assert (head.api_key, head.authorization) == ("secret", "Bearer secret")
    assert head.on_behalf == "alice;read"
    # Every service checks the caller's key again: it goes on unchanged.
    assert head.forward == [
        (b"content-type", b"application/json"),
        (b"x-api-key", b"secret"),
        (b"authorization", b"Bearer secret"),
        (b"x-aimesh-identity", b"alice;read"),
        (b"inference-header-content-length", b"80"),
        (b"tracestate", b"vendor=1"),
        (b"x-request-id", b"req-7"),
        (b"traceparent", GOOD.encode()),
    ]
    assert head.forward_tracing == [
        (b"x-request-id", b"req-7"),
        (b"traceparent", GOOD.encode()),
        (b"tracestate", b"vendor=1"),
    ]


@pytest.mark.parametrize("request_id", [b"", b"x" * 200, b"bad\x01id", "é".encode("latin-1")])
def test_an_unusable_request_id_is_replaced(request_id: bytes) -> None:
    head = RequestHead.read([(b"x-request-id", request_id), (b"traceparent", b"nonsense")])
    assert len(head.request_id) == 32 and head.request_id.isalnum()
    assert head.traceparent.startswith(f"00-{head.request_id}-")


def test_the_edge_reads_host_origin_and_type_and_origin_stops_here() -> None:
    head = RequestHead.read(
        [
            (b"host", b"127.0.0.1:8080"),
            (b"origin", b"http://127.0.0.1:8080"),
            (b"content-type", b"application/json"),
        ]
    )
    assert (head.host, head.origin, head.content_type) == (
        b"127.0.0.1:8080",
        b"http://127.0.0.1:8080",
        b"application/json",
    )
    names = [name for name, _ in head.forward]
    assert b"content-type" in names  # the upstream reads the body by it
    assert b"origin" not in names and b"host" not in names  # judged here; re-made upstream

"""The gateway's core without I/O: a call's deadline, how it reaches each attempt, and
when a failed call falls back."""

from __future__ import annotations

import asyncio

import pytest
from test_gateway_routing import Catalog, ups

from aimesh.config import ResilienceSettings
from aimesh.errors import CircuitOpen, DeadlineExceeded, InvalidRequest, UpstreamTimeout
from aimesh.gateway import LeastOutstanding, Router, RoutingTable, Upstream
from aimesh.gateway.core import CallKind, ModelCore
from aimesh.gateway.routing import Target
from aimesh.resilience import Deadline, Outcome, Resilience

NOW = 100.0


def _core(*, resilience: bool) -> ModelCore:
    router = Router(RoutingTable(), Catalog({}))
    layer = Resilience(ResilienceSettings(), call_timeout_s=30.0, clock=lambda: NOW)
    return ModelCore(
        router, LeastOutstanding(), call_timeout_s=30.0, clock=lambda: NOW,
        resilience=layer if resilience else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("header", "left_s", "expected"),
    [
        (None, None, None),  # the caller set none: each attempt has the route's timeout
        (b"250", None, Deadline(NOW + 0.25)),
        (" 1500 ", None, Deadline(NOW + 1.5)),
        (b"99999999", None, Deadline(NOW + 30.0)),  # never beyond the gateway's own timeout
        (None, 2.0, Deadline(NOW + 2.0)),  # a gRPC call's own deadline
        (None, 3600.0, Deadline(NOW + 30.0)),
    ],
)
def test_a_calls_deadline_is_its_callers_within_the_gateways_timeout(
    header: bytes | str | None, left_s: float | None, expected: Deadline | None
) -> None:
    assert _core(resilience=False).deadline(header, left_s) == expected


@pytest.mark.parametrize(("header", "left_s"), [(b"0", None), (None, 0.0), (None, -1.0)])
def test_a_deadline_passed_already_is_refused_before_any_call(
    header: bytes | None, left_s: float | None
) -> None:
    with pytest.raises(DeadlineExceeded, match="had passed when it came"):
        _core(resilience=False).deadline(header, left_s)


@pytest.mark.parametrize("header", [b"", b"-5", b"1.5", b"soon", b"12345678901", "\u0661\u0662"])
def test_a_deadline_header_that_is_not_whole_milliseconds_is_a_clear_400(
    header: bytes | str,
) -> None:
    with pytest.raises(InvalidRequest, match="x-aimesh-deadline-ms must be the whole milliseconds"):
        _core(resilience=False).deadline(header)


@pytest.mark.parametrize("resilience", [False, True])
def test_each_attempt_gets_the_time_left_and_a_timeout_it_cut_is_the_deadline_passing(
    resilience: bool,
) -> None:
    core = _core(resilience=resilience)
    target = Target("fraud", ups(0), "1")
    timeouts: list[float] = []

    async def slow(upstream: Upstream, timeout_s: float) -> str:
        timeouts.append(timeout_s)
        raise UpstreamTimeout(f"no answer within {timeout_s}s")

    async def call(deadline: Deadline | None) -> str:
        return await core.call("infer", target, slow, deadline=deadline, idempotent=False)

    with pytest.raises(DeadlineExceeded, match="deadline"):
        asyncio.run(call(Deadline(NOW + 0.5)))
    # The route's own timeout, shorter than the deadline: an upstream timeout, as without.
    with pytest.raises(UpstreamTimeout):
        asyncio.run(call(Deadline(NOW + 60.0)))
    with pytest.raises(UpstreamTimeout):
        asyncio.run(call(None))
    assert timeouts == [0.5, 30.0, 30.0]
    with pytest.raises(DeadlineExceeded):
        asyncio.run(call(Deadline(NOW)))  # passed: nothing is sent
    assert len(timeouts) == 3


class _Status(Exception):
    """An adapter's own failure (as gRPC's upstream statuses are)."""


def _by_adapter(exc: BaseException) -> Outcome:
    return Outcome.FAILURE if isinstance(exc, _Status) else Outcome.IGNORED


@pytest.mark.parametrize(
    ("deadline", "error", "kind", "expected"),
    [
        (None, None, None, True),  # a failed answer (a 5xx)
        (None, UpstreamTimeout("slow"), None, True),
        (None, CircuitOpen("fraud", "2", 5.0), None, True),
        (None, InvalidRequest("bad input"), None, False),  # the caller's own fault
        (None, DeadlineExceeded("gone"), None, False),
        (Deadline(NOW + 1.0), None, None, True),
        (Deadline(NOW), None, None, False),  # its caller has given up: no one to answer
        (Deadline(NOW), UpstreamTimeout("slow"), None, False),
        (None, _Status("internal"), CallKind(classify_error=_by_adapter), True),
        (None, _Status("internal"), None, True),  # unknown to the default: a failure
        (None, InvalidRequest("x"), CallKind(classify_error=_by_adapter), False),
    ],
)
def test_a_failed_call_falls_back_only_for_the_upstreams_faults_and_within_its_deadline(
    deadline: Deadline | None,
    error: BaseException | None,
    kind: CallKind[str] | None,
    expected: bool,
) -> None:
    assert _core(resilience=True).falls_back(deadline, error, kind) is expected

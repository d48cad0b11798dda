"""The bound on requests in flight of the FastAPI services, by table: who is counted, who is
refused, and what a refusal looks like at the edge."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from aimesh.errors import Overloaded
from aimesh.rest import Guard, GuardedApp, InFlight, Slot

OPEN = (r"/health", r"/health/live", r"/docs/assets/.+")
STREAMS = (r"/api/jobs/[^/]+/events",)


def _in_flight(limit: int) -> InFlight:
    return InFlight(limit, unbounded=OPEN, streams=STREAMS)


@pytest.mark.parametrize(
    ("limit", "paths", "refused"),
    [
        # Up to the limit, then the one past it.
        (2, ["/api/a", "/api/b", "/api/c"], [False, False, True]),
        # Health and docs are never counted nor refused, however full.
        (1, ["/api/a", "/health", "/health/live", "/docs/assets/x.js", "/api/b"],
         [False, False, False, False, True]),
        # Streams hold at most half the slots; ordinary requests keep the rest.
        (4, ["/api/jobs/1/events", "/api/jobs/2/events", "/api/jobs/3/events", "/api/a",
             "/api/b", "/api/c"], [False, False, True, False, False, True]),
        # A limit of 1 still lets one stream in (half, at least one).
        (1, ["/api/jobs/1/events", "/api/a"], [False, True]),
        # A stream past the whole limit is refused like any request.
        (2, ["/api/a", "/api/b", "/api/jobs/1/events"], [False, False, True]),
        # Not a stream's path: an ordinary request.
        (2, ["/api/jobs/1/events/x", "/api/jobs/1/events/y", "/api/z"], [False, False, True]),
    ],
)  # fmt: skip
def test_requests_past_the_limit_are_refused_and_streams_take_at_most_half(
    limit: int, paths: list[str], refused: list[bool]
) -> None:
    bound = _in_flight(limit)
    got = []
    for path in paths:
        try:
            bound.enter(path)
            got.append(False)
        except Overloaded as exc:
            assert exc.code == "overloaded" and exc.retry_after_s is not None
            got.append(True)
    assert got == refused


def test_each_slot_given_back_lets_one_more_in() -> None:
    bound = _in_flight(2)
    slots: list[Slot | None] = [bound.enter("/api/jobs/1/events"), bound.enter("/api/a")]
    assert slots == ["stream", "request"] and bound.count == 2
    with pytest.raises(Overloaded):
        bound.enter("/api/b")
    assert bound.enter("/health") is None
    bound.leave(None)  # health was never counted
    bound.leave(slots[0])
    assert bound.count == 1 and bound.streams == 0
    assert bound.enter("/api/jobs/2/events") == "stream"
    with pytest.raises(Overloaded):
        bound.enter("/api/jobs/3/events")


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        InFlight(0)


def test_the_edge_answers_a_full_service_with_503_overloaded_and_retry_after() -> None:
    """The held request is counted until the app returns; the next one is refused unseen."""
    seen: list[str] = []
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        if scope["path"] == "/api/held":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guarded = GuardedApp(app, guard=Guard(), in_flight=_in_flight(1))

    async def call(path: str) -> list[dict[str, Any]]:
        scope = {
            "type": "http", "method": "GET", "path": path, "server": ("127.0.0.1", 1),
            "headers": [(b"host", b"127.0.0.1:1")],
        }  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await guarded(scope, receive, send)
        return sent

    async def main() -> None:
        held = asyncio.create_task(call("/api/held"))
        while not seen:  # the held request is inside the app
            await asyncio.sleep(0)
        refused = await call("/api/other")
        assert refused[0]["status"] == 503
        headers = dict(refused[0]["headers"])
        assert headers[b"retry-after"] == b"1" and headers[b"x-request-id"]
        body = json.loads(refused[1]["body"])
        assert body["code"] == "overloaded" and "limit is 1" in body["error"]
        assert (await call("/health"))[0]["status"] == 200
        release.set()
        assert (await held)[0]["status"] == 200
        assert (await call("/api/other"))[0]["status"] == 200
        assert seen == ["/api/held", "/health", "/api/other"]

    asyncio.run(main())

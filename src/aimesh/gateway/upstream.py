"""The one function every call to an upstream goes through: :func:`call_upstream`.

It picks an instance with the policy, counts the request as outstanding there, runs the
protocol's exchange (HTTP or gRPC) and, when the request never reached the instance
(:class:`NotSent`: refused, a stale connection, a replica draining), tries another one.
This is the one place to wrap with the resilience layer of the ROADMAP (deadline, retry,
breaker, bulkhead, in that order), for both protocols at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aimesh.errors import UpstreamError
from aimesh.gateway.instances import REFUSED_PENALTY_S, InstancePolicy, Upstream

__all__ = ["Exchange", "NotSent", "call_upstream"]

T = TypeVar("T")

Exchange = Callable[[Upstream], Awaitable[T]]
"""Sends the request to one instance and returns its answer; raises :class:`NotSent`
when the instance certainly did not process it."""


class NotSent(Exception):
    """The request never reached the instance, or was refused unprocessed: try another."""


async def call_upstream(
    candidates: Sequence[Upstream],
    exchange: Exchange[T],
    *,
    policy: InstancePolicy,
    on_not_sent: Callable[[Upstream, NotSent], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``exchange`` on one of ``candidates`` (never empty), moving on while it is not sent.

    Raises :class:`UpstreamError` when no candidate could be reached; errors of the exchange
    itself (timeouts, broken answers) pass through, since the request may have been run.
    """
    remaining = candidates
    while True:
        now = clock()
        upstream = policy.choose(remaining, now)
        upstream.outstanding += 1
        try:
            return await exchange(upstream)
        except NotSent as exc:
            upstream.refused_until = now + REFUSED_PENALTY_S
            if on_not_sent is not None:
                on_not_sent(upstream, exc)
            remaining = [c for c in remaining if c is not upstream]
            if not remaining:
                # Which instances (internal addresses) refused, and how, is for the log.
                raise UpstreamError(
                    f"no instance could be reached ({len(candidates)} tried)"
                ) from exc
        finally:
            upstream.outstanding -= 1

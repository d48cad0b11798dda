"""The one function every call to an upstream goes through: :func:`call_upstream`.

It picks an instance with the policy, counts the request as outstanding there, runs the
protocol's exchange (HTTP or gRPC) within the call's timeout (never beyond the request's
deadline) and, when the request never reached the instance (:class:`NotSent`: refused, a
stale connection, a replica draining), tries another one. The resilience layer
(:class:`~aimesh.resilience.Resilience`: deadline, retry, breaker, bulkhead, in that order)
runs the same exchanges in its place when it is on (:class:`~aimesh.gateway.core.ModelCore`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aimesh.errors import DeadlineExceeded, UpstreamError
from aimesh.gateway.instances import REFUSED_PENALTY_S, InstancePolicy, Upstream
from aimesh.resilience import Deadline

__all__ = ["Exchange", "NotSent", "call_upstream"]

T = TypeVar("T")

Exchange = Callable[[Upstream, float], Awaitable[T]]
"""Sends the request to one instance, waiting ``timeout_s`` (the second argument) at most,
and returns its answer; raises :class:`NotSent` when the instance certainly did not
process it. The timeout is what the instance has left too: an HTTP exchange sends it in
the ``x-aimesh-deadline-ms`` header, a gRPC one as the call's deadline."""


class NotSent(Exception):
    """The request never reached the instance, or was refused unprocessed: try another."""


async def call_upstream(
    candidates: Sequence[Upstream],
    exchange: Exchange[T],
    *,
    policy: InstancePolicy,
    timeout_s: float,
    deadline: Deadline | None = None,
    on_not_sent: Callable[[Upstream, NotSent], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``exchange`` on one of ``candidates`` (never empty), moving on while it is not sent;
    each attempt within ``timeout_s``, cut to what is left of ``deadline``.

    Raises :class:`UpstreamError` when no candidate could be reached,
    :class:`DeadlineExceeded` when the deadline passed before an attempt; errors of the
    exchange itself (timeouts, broken answers) pass through, since the request may have
    been run.
    """
    remaining = candidates
    while True:
        now = clock()
        timeout = timeout_s
        if deadline is not None:
            if deadline.expired(now):
                raise DeadlineExceeded(
                    "the request's deadline passed before an upstream was called"
                )
            timeout = deadline.timeout(timeout_s, now)
        upstream = policy.choose(remaining, now)
        upstream.outstanding += 1
        try:
            return await exchange(upstream, timeout)
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

"""What one call's outcome counts as: a success, a failure, or nothing (ignored).

Failures are the upstream's fault: timeouts, connection errors, 5xx answers. A 4xx the
client caused says nothing of the upstream's health, so it is ignored rather than counted
as a success: a client sending bad requests in a loop must not dilute an outage's failure
rate below the breaker's threshold. Slowness is judged apart, by duration
(:class:`~aimesh.resilience.CircuitBreaker`).
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from aimesh.errors import AimeshError, DeadlineExceeded, Overloaded, Unavailable, UpstreamError

__all__ = ["Outcome", "classify_exception", "classify_status"]


class Outcome(StrEnum):
    """How a call counts for breakers and ejection."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    """Neither: the call says nothing of the upstream (a client's 4xx, a cancelled call)."""


# Enum members read through their class cost ~80 ns each: the hot paths read these.
SUCCESS, FAILURE, IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED


def classify_status(status: int) -> Outcome:
    """An HTTP status's outcome: 5xx a failure, 4xx ignored (the client's), else a success."""
    if status >= 500:
        return FAILURE
    if status >= 400:
        return IGNORED
    return SUCCESS


# The upstream's own faults, as the gateway's exchanges raise them; any AimeshError else
# (a bad request found on the way, a missing model) is the caller's and ignored.
_UPSTREAM_FAULTS = (UpstreamError, Unavailable, Overloaded)


def classify_exception(exc: BaseException) -> Outcome:
    """An exception's outcome: timeouts, connection errors and upstream errors are failures;
    an aimesh error the caller caused is ignored; a cancelled call is ignored; anything
    else (a broken answer) is a failure. A call cut short by the caller's own deadline
    (:class:`DeadlineExceeded`) is ignored: a client with tight deadlines says nothing of
    the upstream's health, and must not open its breaker for everyone (a timeout within
    the route's own limit is an ``UpstreamTimeout``: a failure)."""
    if isinstance(exc, asyncio.CancelledError | DeadlineExceeded):
        return Outcome.IGNORED
    if isinstance(exc, AimeshError):
        return Outcome.FAILURE if isinstance(exc, _UPSTREAM_FAULTS) else Outcome.IGNORED
    return Outcome.FAILURE

"""Fallbacks: what answers when a route's model cannot, described as data.

A route declares one :class:`~aimesh.config.Fallback` in the project file (another
version, another model, or a static answer); the gateway runs it when the resilience layer
gives up for a reason of the upstream's (:func:`should_fall_back`), and marks the answer
with the :data:`FALLBACK_HEADER` header (:func:`fallback_header_value`), so that a client
and the figures per version can tell a fallback's answer from the model's.
"""

from __future__ import annotations

from collections.abc import Callable

from aimesh.config import Fallback
from aimesh.errors import CircuitOpen, DeadlineExceeded, Overloaded, RateLimited
from aimesh.resilience.outcomes import Outcome, classify_exception

__all__ = ["FALLBACK_HEADER", "fallback_header_value", "should_fall_back"]

FALLBACK_HEADER = "x-aimesh-fallback"
"""The header of an answer a fallback gave: which one (``version:4``, ``model:other``,
``model:other@2``, ``static``)."""


def fallback_header_value(fallback: Fallback) -> str:
    """The :data:`FALLBACK_HEADER` value of an answer ``fallback`` gave."""
    kind = fallback.kind
    if kind == "static":
        return "static"
    if kind == "version":
        return f"version:{fallback.version}"
    at = f"@{fallback.version}" if fallback.version is not None else ""
    return f"model:{fallback.model}{at}"


def should_fall_back(
    error: BaseException, classify: Callable[[BaseException], Outcome] = classify_exception
) -> bool:
    """Whether a call that ended in ``error`` goes to the route's fallback.

    Yes for the upstream's faults (timeouts, connection and upstream errors, as ``classify``
    judges them: a protocol adapter passes its own), an open circuit and full bulkheads; no
    for what the client caused (a bad request, its own rate limit) and for a passed
    deadline (the caller has given up). A 5xx answer relayed as a result falls back too:
    the caller checks ``classify_status(status) is FAILURE``.
    """
    if isinstance(error, (DeadlineExceeded, RateLimited)):
        return False
    if isinstance(error, (CircuitOpen, Overloaded)):
        return True
    return classify(error) is Outcome.FAILURE

"""The resilience layer: one implementation of deadlines, retries, circuit breakers,
outlier ejection, bulkheads and fallbacks, for the gateway now and pipelines later.

Pure logic: the time comes from an injected clock (monotonic seconds), waits from an
injected sleep, jitter from an injected random source; nothing here does I/O but the
caller's own attempt. :class:`Resilience` composes the parts in a fixed order, outermost
first: deadline, retry, breaker, bulkhead, the call (see :mod:`aimesh.resilience.executor`
for why), so that a retry never bypasses an open breaker and never outlives the caller's
deadline. Every state change of a breaker or an instance goes to a listener as a
:class:`StateChange`, with the figures that drove it. Settings: :class:`~aimesh.config.
ResilienceSettings` (``gateway.resilience`` in ``aimesh.yaml``), with per-route overrides.
"""

from aimesh.config import Fallback, ResilienceSettings, StaticOutput
from aimesh.resilience.breaker import (
    BreakerKey,
    Breakers,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Permit,
)
from aimesh.resilience.bulkhead import Bulkheads
from aimesh.resilience.deadline import DEADLINE_HEADER, Deadline, deadline_header_value
from aimesh.resilience.events import Listener, StateChange
from aimesh.resilience.executor import Attempt, CallRules, Resilience, first_candidate
from aimesh.resilience.fallback import FALLBACK_HEADER, fallback_header_value, should_fall_back
from aimesh.resilience.outcomes import Outcome, classify_exception, classify_status
from aimesh.resilience.outliers import EjectionSnapshot, InstanceState, OutlierDetector
from aimesh.resilience.retry import RetryBudget, backoff_s
from aimesh.resilience.window import CountWindow, TimeWindow

__all__ = [
    "DEADLINE_HEADER",
    "FALLBACK_HEADER",
    "Attempt",
    "BreakerKey",
    "BreakerSnapshot",
    "BreakerState",
    "Breakers",
    "Bulkheads",
    "CallRules",
    "CircuitBreaker",
    "CountWindow",
    "Deadline",
    "EjectionSnapshot",
    "Fallback",
    "InstanceState",
    "Listener",
    "Outcome",
    "OutlierDetector",
    "Permit",
    "Resilience",
    "ResilienceSettings",
    "RetryBudget",
    "StateChange",
    "StaticOutput",
    "TimeWindow",
    "backoff_s",
    "classify_exception",
    "classify_status",
    "deadline_header_value",
    "fallback_header_value",
    "first_candidate",
    "should_fall_back",
]

"""The record of every state change of a breaker or an instance's ejection.

A :class:`StateChange` goes to the listener given to :class:`~aimesh.resilience.Breakers`,
:class:`~aimesh.resilience.OutlierDetector` or :class:`~aimesh.resilience.Resilience`; the
gateway turns each into one Prometheus sample and one structured log line. It carries the
figures that drove the decision, with the thresholds they were held against, so that every
decision can be checked again from the log alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Listener", "StateChange"]


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state change: what changed (``component``, ``key``), from and to which state,
    why (``reason``), when (monotonic ``at``), until when the new state lasts, and the
    figures of the decision.

    Breakers (``key`` = ``(route, model, version)``), states ``closed``, ``open``,
    ``half_open``; reasons and their figures:

    - ``failure_rate`` / ``slow_call_rate`` (closed to open): ``calls``, ``failures``,
      ``slow_calls``, ``failure_rate``, ``slow_call_rate``, ``failure_threshold``,
      ``slow_call_threshold``, ``min_calls``, ``open_s``;
    - ``wait_elapsed`` (open to half-open): ``open_s``, ``rejected`` (calls refused while open);
    - ``probes_passed`` (half-open to closed) and ``probe_failure_rate`` /
      ``probe_slow_call_rate`` (half-open to open): ``probes``, ``calls``, ``failures``,
      ``slow_calls``, ``failure_threshold``, ``slow_call_threshold`` (and ``open_s``).

    Instances (``key`` = ``(service, instance)``), states ``healthy`` and ``ejected``:

    - ``consecutive_failures`` (healthy to ejected): ``consecutive_failures``,
      ``threshold``, ``times_ejected``, ``ejection_s``, ``ejected`` (of the service, this one
      included), ``instances``, ``max_ejected``;
    - ``ejection_elapsed`` (ejected to healthy): ``times_ejected``.
    """

    component: Literal["breaker", "outlier"]
    key: tuple[str, ...]
    old: str
    new: str
    reason: str
    at: float
    until: float | None
    figures: Mapping[str, float]

    def log_fields(self) -> dict[str, object]:
        """The fields of the event's structured log line (figures flattened in)."""
        fields: dict[str, object] = {
            "component": self.component,
            "key": "/".join(self.key),
            "from": self.old,
            "to": self.new,
            "reason": self.reason,
            "at": round(self.at, 6),
        }
        if self.until is not None:
            fields["until"] = round(self.until, 6)
        fields.update(self.figures)
        return fields


Listener = Callable[[StateChange], None]
"""Told of every state change, synchronously, on the caller's path: it must be quick and
must not raise (count, log, and return)."""

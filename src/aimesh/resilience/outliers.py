"""Outlier ejection: an instance that keeps failing leaves load balancing for a while.

As Envoy's consecutive-failure detection, with small deployments' defaults
(:class:`~aimesh.config.OutlierSettings`): ``consecutive_failures`` failures in a row eject
an instance for ``base_ejection_s`` times the number of times it was ejected lately (at
most ``max_ejection_s``); a success resets the count. At most ``max_ejection_percent`` of a
service's instances are ejected at once, rounded down and never all of them: when most
instances fail the fault is rarely theirs, and the breaker is the answer. An ejected
instance comes back on its own when its time is up (noticed at the next question about
it) on probation: its first failure ejects it again, for longer.

An instance's ejection counts for every route to it; who asks about it passes the
service it belongs to and how many instances that service has now (from discovery).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from aimesh.config import OutlierSettings
from aimesh.resilience.events import Listener, StateChange
from aimesh.resilience.outcomes import Outcome

__all__ = ["EjectionSnapshot", "InstanceState", "OutlierDetector"]


class InstanceState(StrEnum):
    """Whether load balancing may choose an instance."""

    HEALTHY = "healthy"
    EJECTED = "ejected"


@dataclass(frozen=True, slots=True)
class EjectionSnapshot:
    """One instance of the ejection table, as ``aimesh breakers`` shows it."""

    service: str
    instance: str
    state: InstanceState
    consecutive_failures: int
    times_ejected: int
    until: float | None
    """Monotonic time when an ejected instance comes back."""


@dataclass(slots=True)
class _Instance:
    service: str
    consecutive: int = 0
    times: int = 0  # ejections lately (the multiplier of the next ejection's time)
    until: float = 0.0  # while ejected: when it comes back
    returned: float | None = None  # when it last came back


class OutlierDetector:
    """The ejection table, by instance key; see the module's docstring."""

    def __init__(
        self,
        settings: OutlierSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        self._threshold = settings.consecutive_failures
        self._base_s = settings.base_ejection_s
        self._max_s = settings.max_ejection_s
        self._percent = settings.max_ejection_percent
        self._clock = clock
        self._listener = listener
        self._instances: dict[str, _Instance] = {}  # those with failures or ejections lately
        self._ejected: dict[str, _Instance] = {}

    def is_ejected(self, instance: str, now: float) -> bool:
        """Whether ``instance`` is out of load balancing at ``now`` (one whose time is up
        comes back here)."""
        if not self._ejected:
            return False
        record = self._ejected.get(instance)
        if record is None:
            return False
        if now < record.until:
            return True
        self._come_back(instance, record, now)
        return False

    @property
    def ejected(self) -> int:
        """Instances ejected now, or until someone asks about them (0: a cheap test that
        nothing need be filtered)."""
        return len(self._ejected)

    def record(
        self, instance: str, outcome: Outcome, now: float, *, service: str, instances: int
    ) -> None:
        """Count a call's outcome on ``instance`` of ``service`` (which has ``instances``)."""
        if outcome is Outcome.FAILURE:
            self.failure(instance, now, service=service, instances=instances)
        elif outcome is Outcome.SUCCESS:
            self.success(instance, now)

    def success(self, instance: str, now: float) -> None:
        """A call on ``instance`` succeeded: its failures in a row are forgotten."""
        record = self._instances.get(instance)
        if record is None:
            return
        record.consecutive = 0
        if instance in self._ejected:
            return
        returned = record.returned
        if record.times == 0 or (returned is not None and now - returned >= self._max_s):
            del self._instances[instance]  # nothing left to remember

    def failure(self, instance: str, now: float, *, service: str, instances: int) -> None:
        """A call on ``instance`` failed: eject it if that makes enough failures in a row and
        its service may lose one more instance."""
        if self.is_ejected(instance, now):
            return  # a call that was under way when it was ejected
        record = self._instances.get(instance)
        if record is None:
            record = self._instances[instance] = _Instance(service)
        record.service = service
        record.consecutive += 1
        if record.consecutive < self._threshold:
            return
        ejected = self._ejected_in(service, now)
        allowed = min(instances * self._percent // 100, instances - 1)
        if ejected >= allowed:
            return  # the count stays: the next failure tries again
        if record.returned is not None and now - record.returned >= self._max_s:
            record.times = 0  # back long enough to start afresh
        record.times += 1
        duration = min(self._base_s * record.times, self._max_s)
        record.until = now + duration
        self._ejected[instance] = record
        if self._listener is not None:
            figures = {
                "consecutive_failures": record.consecutive,
                "threshold": self._threshold,
                "times_ejected": record.times,
                "ejection_s": duration,
                "ejected": ejected + 1,
                "instances": instances,
                "max_ejected": allowed,
            }
            self._tell(
                record, instance, InstanceState.EJECTED, "consecutive_failures", now, figures
            )

    def forget(self, instance: str) -> None:
        """Drop what is known of ``instance`` (it left discovery)."""
        self._instances.pop(instance, None)
        self._ejected.pop(instance, None)

    def snapshot(self, now: float | None = None) -> list[EjectionSnapshot]:
        """Every instance with failures or ejections lately, by service and key (read only)."""
        at = self._clock() if now is None else now
        rows = []
        for key, record in sorted(self._instances.items(), key=lambda i: (i[1].service, i[0])):
            ejected = key in self._ejected and at < record.until
            rows.append(
                EjectionSnapshot(
                    service=record.service,
                    instance=key,
                    state=InstanceState.EJECTED if ejected else InstanceState.HEALTHY,
                    consecutive_failures=record.consecutive,
                    times_ejected=record.times,
                    until=record.until if ejected else None,
                )
            )
        return rows

    def _ejected_in(self, service: str, now: float) -> int:
        """Instances of ``service`` ejected at ``now`` (those whose time is up come back)."""
        count = 0
        for key, record in list(self._ejected.items()):
            if record.service != service:
                continue
            if now < record.until:
                count += 1
            else:
                self._come_back(key, record, now)
        return count

    def _come_back(self, instance: str, record: _Instance, now: float) -> None:
        del self._ejected[instance]
        record.returned = record.until
        record.consecutive = self._threshold - 1  # probation: one failure ejects it again
        if self._listener is not None:
            figures = {"times_ejected": record.times}
            self._tell(record, instance, InstanceState.HEALTHY, "ejection_elapsed", now, figures)

    def _tell(
        self,
        record: _Instance,
        instance: str,
        to: InstanceState,
        reason: str,
        now: float,
        figures: Mapping[str, float],
    ) -> None:
        assert self._listener is not None
        old = InstanceState.HEALTHY if to is InstanceState.EJECTED else InstanceState.EJECTED
        until = record.until if to is InstanceState.EJECTED else None
        key = (record.service, instance)
        self._listener(
            StateChange("outlier", key, old.value, to.value, reason, now, until, figures)
        )

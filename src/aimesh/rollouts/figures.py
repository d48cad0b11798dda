"""Live figures per model version: what every gateway counts and the controller judges by.

Each gateway keeps a :class:`FigureBook`: per model and version, requests by outcome class
and a latency histogram, counted from the gateway's start (cumulative, like Prometheus
counters). It publishes the whole book about once a second (:class:`Report`, on
``aimesh.figures.<gateway>``); whoever judges a rollout keeps the latest report of every
gateway (:class:`Tally`) and takes the difference between two moments, summed over the
gateways: the figures of an interval across the fleet, not one gateway's view. A gateway
that restarted (its counts went down) counts from zero again.

The classes of an outcome (:data:`OutcomeClass`): ``ok``; ``client`` (a 4xx the caller
caused: never the version's fault); ``upstream`` (the instance answered 5xx); ``timeout``;
``connection`` (no answer at all). Latency is kept in buckets growing by 10% from 0.5 ms,
so a p99 is known within 10%: fine enough for a threshold like "p99 at most 1.2x".
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

__all__ = [
    "FIGURES_EVERY_S",
    "FIGURES_SUBJECT",
    "FigureBook",
    "Interval",
    "OutcomeClass",
    "Report",
    "Tally",
    "VersionCounts",
    "bucket_of",
    "class_of",
    "upper",
]

FIGURES_SUBJECT = "aimesh.figures"
FIGURES_EVERY_S = 1.0
"""How often a gateway publishes its figures: a controller sees an interval within this."""
"""Gateways publish their books on ``aimesh.figures.<gateway id>``."""

OutcomeClass = Literal["ok", "client", "upstream", "timeout", "connection"]
_CLASSES: tuple[OutcomeClass, ...] = ("ok", "client", "upstream", "timeout", "connection")
_FIRST_S = 0.0005
_GROWTH = 1.1
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = 140  # 0.5 ms * 1.1^140 is about 310 s: past every timeout


def class_of(status: int) -> OutcomeClass:
    """The class of an answer by its HTTP status (no answer: ``timeout`` or ``connection``,
    said by whoever saw it fail)."""
    if status < 400:
        return "ok"
    return "client" if status < 500 else "upstream"


def bucket_of(seconds: float) -> int:
    """The latency bucket of a duration: bucket ``i`` holds durations up to ``upper(i)``."""
    if seconds <= _FIRST_S:
        return 0
    return min(_BUCKETS - 1, math.ceil(math.log(seconds / _FIRST_S) / _LOG_GROWTH))


def upper(bucket: int) -> float:
    """The longest duration bucket ``bucket`` holds, in seconds."""
    return float(_FIRST_S * _GROWTH**bucket)


class VersionCounts(msgspec.Struct, kw_only=True):
    """One model version's counts since a gateway started."""

    ok: int = 0
    client: int = 0
    upstream: int = 0
    timeout: int = 0
    connection: int = 0
    fallbacks: int = 0
    compared: int = 0
    """Shadow answers compared with the live one (a shadow version's counts)."""
    agreed: int = 0
    """Of those, the ones agreeing on the top class."""
    abs_diff: float = 0.0
    """The sum over comparisons of their mean absolute difference."""
    dropped: int = 0
    """Copies not sent: the gateway had as many shadow calls in flight as it allows."""
    latency: dict[int, int] = msgspec.field(default_factory=dict)
    """Requests per latency bucket (answered ones: ok, client, upstream)."""

    def count(self, outcome: OutcomeClass, seconds: float) -> None:
        """Count one request."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome in ("ok", "client", "upstream"):
            bucket = bucket_of(seconds)
            self.latency[bucket] = self.latency.get(bucket, 0) + 1


class Report(msgspec.Struct, kw_only=True):
    """What one gateway publishes: its book, model -> version -> counts."""

    gateway: str
    started: float
    """The gateway's start (wall clock): a new start means counts began again."""
    at: float
    models: dict[str, dict[str, VersionCounts]]


class FigureBook:
    """One gateway's counts per model version (cheap to count: a few dict lookups)."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.started = time.time()
        self._models: dict[str, dict[str, VersionCounts]] = {}

    def count(
        self,
        model: str,
        version: str,
        outcome: OutcomeClass,
        seconds: float,
        *,
        fallback: bool = False,
    ) -> None:
        """Count one request answered (or not) by ``model`` at ``version``."""
        counts = self.counts(model, version)
        counts.count(outcome, seconds)
        if fallback:
            counts.fallbacks += 1

    @property
    def empty(self) -> bool:
        """Whether nothing was counted yet."""
        return not self._models

    def counts(self, model: str, version: str) -> VersionCounts:
        """The counts of ``model`` at ``version`` (made at first use)."""
        versions = self._models.get(model)
        if versions is None:
            versions = self._models[model] = {}
        counts = versions.get(version)
        if counts is None:
            counts = versions[version] = VersionCounts()
        return counts

    def compared(self, model: str, version: str, agreed: bool, mean_abs_diff: float) -> None:
        """Count one shadow answer compared with the live one."""
        counts = self.counts(model, version)
        counts.compared += 1
        counts.agreed += agreed
        counts.abs_diff += mean_abs_diff

    def report(self) -> Report:
        """The book as it stands, to publish."""
        return Report(
            gateway=self.gateway, started=self.started, at=time.time(), models=self._models
        )

    def encode(self) -> bytes:
        """:meth:`report` as JSON."""
        return msgspec.json.encode(self.report())


_DECODER = msgspec.json.Decoder(Report)


@dataclass(frozen=True, slots=True)
class Interval:
    """One version's figures over an interval, summed over the gateways."""

    requests: int
    """Answered or failed upstream: ok + upstream + timeout + connection (client errors
    are the caller's, not the version's, and count in ``client`` only)."""
    errors: int
    """upstream + timeout + connection."""
    client: int
    fallbacks: int
    latency: Mapping[int, int]
    compared: int = 0
    """Shadow answers compared with the live ones."""
    agreed: int = 0
    """Of those, the ones agreeing on the top class."""
    abs_diff: float = 0.0
    dropped: int = 0

    @property
    def agreement(self) -> float | None:
        """Agreed over compared; None without comparisons."""
        return self.agreed / self.compared if self.compared else None

    @property
    def mean_abs_diff(self) -> float | None:
        """The mean absolute difference of the shadow's scores; None without comparisons."""
        return self.abs_diff / self.compared if self.compared else None

    @property
    def error_rate(self) -> float | None:
        """Errors over requests; None without requests (no data is not a pass)."""
        return self.errors / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        """The ``q`` latency quantile in seconds (the bucket's upper bound), or None."""
        total = sum(self.latency.values())
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for bucket in sorted(self.latency):
            seen += self.latency[bucket]
            if seen >= rank:
                return upper(bucket)
        return upper(max(self.latency))


class Tally:
    """The latest report of every gateway, and intervals computed from two moments."""

    def __init__(self, *, forget_after_s: float = 60.0) -> None:
        self._latest: dict[str, Report] = {}
        self._forget_after_s = forget_after_s

    def hear(self, data: bytes) -> None:
        """Take a published report (an unreadable one is ignored)."""
        try:
            report = _DECODER.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        held = self._latest.get(report.gateway)
        if held is None or (report.started, report.at) >= (held.started, held.at):
            self._latest[report.gateway] = report

    def snapshot(self) -> dict[str, Report]:
        """The reports held now (keep it: an interval is the difference of two)."""
        now = time.time()
        return {g: r for g, r in self._latest.items() if now - r.at <= self._forget_after_s}

    @staticmethod
    def interval(
        before: Mapping[str, Report], after: Mapping[str, Report], model: str, version: str
    ) -> Interval:
        """``version``'s figures between two snapshots, summed over gateways."""
        sums: dict[str, float] = dict.fromkeys(
            (*_CLASSES, "fallbacks", "compared", "agreed", "abs_diff", "dropped"), 0
        )
        latency: dict[int, int] = {}
        for gateway, report in after.items():
            now = report.models.get(model, {}).get(version)
            if now is None:
                continue
            earlier = before.get(gateway)
            then = None
            if earlier is not None and earlier.started == report.started:
                then = earlier.models.get(model, {}).get(version)
            for name in sums:
                sums[name] += getattr(now, name) - (getattr(then, name) if then else 0)
            for bucket, count in now.latency.items():
                gained = count - (then.latency.get(bucket, 0) if then else 0)
                if gained:
                    latency[bucket] = latency.get(bucket, 0) + gained
        errors = int(sums["upstream"] + sums["timeout"] + sums["connection"])
        return Interval(
            requests=int(sums["ok"]) + errors,
            errors=errors,
            client=int(sums["client"]),
            fallbacks=int(sums["fallbacks"]),
            latency=latency,
            compared=int(sums["compared"]),
            agreed=int(sums["agreed"]),
            abs_diff=sums["abs_diff"],
            dropped=int(sums["dropped"]),
        )

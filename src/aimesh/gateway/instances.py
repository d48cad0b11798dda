"""Upstream instances as the gateway sees them, and the policy that picks one per request.

An :class:`Upstream` is one running service instance from discovery, plus what this
gateway knows of it: requests it has in flight there, and whether a connection to it was
just refused. An :class:`InstancePolicy` picks one of several candidates;
:class:`LeastOutstanding` is the default. Weighted splits and canaries (ROADMAP) will be
other policies behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from aimesh.bus import ServiceInstance

__all__ = ["InstancePolicy", "LeastOutstanding", "Upstream", "address_of"]

# After a refused connection an instance is passed over for this long, unless nothing else
# is left: a crashed replica keeps its discovery key until the bucket's TTL removes it.
REFUSED_PENALTY_S = 5.0


def address_of(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http URL with a host: {url!r}")
    return parts.hostname, parts.port or 80


@dataclass(eq=False, slots=True)
class Upstream:
    """One instance requests can go to, with this gateway's live view of it."""

    key: str
    kind: str
    name: str
    version: str | None = None
    ref: str | None = None
    rest: tuple[str, int] | None = None
    grpc_address: str | None = None
    outstanding: int = 0
    """Requests this gateway has in flight to the instance now."""
    refused_until: float = 0.0
    """Monotonic time until which a refused instance is passed over."""
    label: str = field(default="")
    """How metrics name the instance: its REST address, else its gRPC address."""
    apis: tuple[str, ...] = ()
    """What else it answers under ``/api/<name>`` besides its own name (discovery says)."""

    @classmethod
    def from_instance(cls, instance: ServiceInstance) -> Upstream:
        """The upstream for a discovery record."""
        rest = address_of(instance.rest_url) if instance.rest_url else None
        label = f"{rest[0]}:{rest[1]}" if rest else (instance.grpc_address or instance.id)
        return cls(
            key=instance.key,
            kind=instance.kind,
            name=instance.model or instance.name,
            version=instance.version,
            ref=instance.ref,
            rest=rest,
            grpc_address=instance.grpc_address,
            label=label,
            apis=instance.apis,
        )


class InstancePolicy(Protocol):
    """Chooses the instance for one request among candidates (never an empty sequence)."""

    def choose(self, candidates: Sequence[Upstream], now: float) -> Upstream:
        """One of ``candidates``; ``now`` is the monotonic clock."""
        ...


class LeastOutstanding:
    """The candidate with the fewest requests in flight; ties go round in turn.

    Instances refused recently are passed over while any other is left. The turn makes
    sequential traffic (concurrency 1, where every count is zero) spread over replicas.
    """

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Upstream], now: float) -> Upstream:
        """The least loaded healthy candidate (or the least loaded one, if none is healthy)."""
        n = len(candidates)
        if n == 1:
            return candidates[0]
        self._turn = start = (self._turn + 1) % n
        best: Upstream | None = None
        fallback = candidates[start]
        for i in range(n):
            candidate = candidates[(start + i) % n]
            if candidate.outstanding < fallback.outstanding:
                fallback = candidate
            if candidate.refused_until > now:
                continue
            if best is None or candidate.outstanding < best.outstanding:
                best = candidate
        return best if best is not None else fallback

"""Prometheus metrics of the gateway: requests by route, upstream and status; latency; errors."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from aimesh.resilience import StateChange

__all__ = ["GATEWAY", "GatewayMetrics"]

log = logging.getLogger("aimesh.gateway.resilience")

GATEWAY = "gateway"
"""The ``upstream`` label of requests the gateway answered itself."""

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5, 10.0,
)  # fmt: skip


class GatewayMetrics:
    """The gateway's metrics, on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aimesh_gateway_requests",
            "Requests answered, by route (infer, metadata, ready, aggregate, api, ...), "
            "upstream instance and HTTP status (gRPC: status code name).",
            ["route", "protocol", "upstream", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "aimesh_gateway_request_seconds",
            "Time from request received to response sent, by route and upstream.",
            ["route", "protocol", "upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "aimesh_gateway_upstream_errors",
            "Failed exchanges with an upstream: refused (retried elsewhere), timeout, broken.",
            ["upstream", "reason"],
            registry=r,
        )
        self.transitions = Counter(
            "aimesh_gateway_resilience_transitions",
            "State changes of circuit breakers (key route/model/version: closed, open, "
            "half_open) and of instances (key service/instance: healthy, ejected), by reason.",
            ["component", "key", "to", "reason"],
            registry=r,
        )
        # Children by label values: .labels() takes a lock and builds a tuple per call.
        self._children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}

    def observe(
        self, route: str, protocol: str, upstream: str, status: str, seconds: float
    ) -> None:
        """Record one answered request."""
        key = (route, protocol, upstream, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, protocol, upstream, status),
                self.latency.labels(route, protocol, upstream),
            )
        children[0].inc()
        children[1].observe(seconds)

    def upstream_error(self, upstream: str, reason: str) -> None:
        """Record one failed exchange."""
        self.upstream_errors.labels(upstream, reason).inc()

    def state_change(self, change: StateChange) -> None:
        """Count a breaker's or an instance's state change, and log it (one line, with the
        figures that drove it: every decision can be replayed from the log)."""
        key = "/".join(change.key)
        self.transitions.labels(change.component, key, change.new, change.reason).inc()
        log.info("%s %s: %s -> %s (%s)", change.component, key, change.old, change.new,
                 change.reason, extra=change.log_fields())  # fmt: skip

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

"""Prometheus metrics of a model service: requests, latency, errors, batches, model loads.

With several worker processes, each writes to ``PROMETHEUS_MULTIPROC_DIR`` (set by the
parent before the workers start) and ``/metrics`` sums them, whichever worker answers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from aimesh.serving.batching import BatchStats

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """The model service's metrics, registered on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aimesh_inference_requests",
            "Inference requests answered, by model, version, protocol and status.",
            ["model", "version", "protocol", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "aimesh_inference_request_seconds",
            "Time from request received to response ready.",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "aimesh_batch_size_rows",
            "Rows in one model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "aimesh_batch_size_requests",
            "Requests coalesced into one model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "aimesh_batch_queue_seconds",
            "Time a request waited for its batch to start.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_time = Gauge(
            "aimesh_model_load_seconds",
            "Seconds the served version took to load.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )

    def observe(self, model: str, version: str, protocol: str, status: str, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(model, version, protocol, status).inc()
        self.latency.labels(model, version, protocol).observe(seconds)

    def batch_observer(self, model: str) -> BatchObserver:
        """A callback for the batcher that records each batch of ``model``."""
        return BatchObserver(self, model)

    def render(self) -> bytes:
        """The text exposition of every metric (summed over workers when there are several)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


class BatchObserver:
    """Records batch sizes and queue times for one model."""

    def __init__(self, metrics: ServingMetrics, model: str) -> None:
        self._rows = metrics.batch_size.labels(model)
        self._requests = metrics.batch_requests.labels(model)
        self._queue = metrics.queue_time.labels(model)

    def __call__(self, stats: BatchStats) -> None:
        self._rows.observe(stats.rows)
        self._requests.observe(stats.requests)
        for waited in stats.queue_s:
            self._queue.observe(waited)

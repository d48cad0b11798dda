"""A worker's small HTTP face (:mod:`aimesh.rest.probe`): ``/health``, ``/metrics``.

``aimesh worker KIND --port P`` serves it next to the consumer loop (``aimesh up`` always
does, so that it knows when a worker is ready). ``/health`` is readiness: 200 while the
worker pulls from its queue over a live bus connection, 503 before, while it drains and
while the bus is gone (it reconnects by itself); ``/health/live`` answers 200 for as long
as the process serves. Both are open. ``/metrics`` counts the
worker's jobs by outcome and the side effects its fences refused, and shows how many run
now; it needs the ``read`` scope whenever keys exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aimesh.auth import Keyring
from aimesh.config import AuthSettings
from aimesh.jobs.worker import Worker
from aimesh.rest import Guard, ProbeApp, Readiness, bus_check, guard_of, serve_probe

__all__ = ["serve_health", "worker_probe"]

_OUTCOMES = ("succeeded", "failed", "retried", "cancelled", "released", "skipped")


class _WorkerCollector(Collector):
    """The worker's counters, read when scraped."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self.worker
        jobs = CounterMetricFamily(
            "aimesh_worker_jobs",
            "Attempts this worker ended, by outcome.",
            labels=["kind", "outcome"],
        )
        for outcome in _OUTCOMES:
            jobs.add_metric([w.kind, outcome], getattr(w.stats, outcome))
        yield jobs
        fenced = CounterMetricFamily(
            "aimesh_worker_fenced",
            "Side effects (registry pushes, alias moves, results) refused because their "
            "attempt was past its deadline or stopped.",
            labels=["kind"],
        )
        fenced.add_metric([w.kind], w.stats.fenced)
        yield fenced
        running = GaugeMetricFamily("aimesh_worker_running", "Jobs running now.", labels=["kind"])
        running.add_metric([w.kind], w.running)
        yield running
        slots = GaugeMetricFamily(
            "aimesh_worker_slots", "Jobs run at once, at most.", labels=["kind"]
        )
        slots.add_metric([w.kind], w.concurrency)
        yield slots


def worker_probe(worker: Worker, keyring: Keyring, guard: Guard | None = None) -> ProbeApp:
    """The worker's health (pulling from its queue, the bus) and its job counters."""
    metrics = CollectorRegistry(auto_describe=True)
    metrics.register(_WorkerCollector(worker))
    readiness = Readiness()

    def pulling() -> str | None:
        if worker.stopping:
            return "draining"
        return None if worker.ready.is_set() else "not pulling yet"

    readiness.require("queue", pulling)
    readiness.require("bus", bus_check(lambda: worker.bus))
    facts = {"kind": worker.kind, "worker": worker.id}
    return ProbeApp(readiness, metrics, keyring, guard=guard, facts=facts)


async def serve_health(
    worker: Worker, host: str, port: int, keyring: Keyring, auth: AuthSettings | None = None
) -> tuple[asyncio.Task[None], int]:
    """Serve the worker's health and metrics; returns the server's task and its port.

    Cancel the task to stop it.
    """
    app = worker_probe(worker, keyring, guard_of(auth))
    return await serve_probe(app, host, port, name="worker")

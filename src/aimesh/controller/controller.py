"""The rollout controller: judges every running canary and moves it on, one process at a time.

It holds a lease on the bus (``rollout-controller`` in the leases bucket) while it works; a
second controller waits for it, and takes over when the first dies or is stopped. All that
it decides is stored in the rollout's record (step, weight, when the step began, every
decision with its figures), so a successor continues from the recorded step: it needs the
figures at the start of the step, which only the holder saw, so the interval begins again
when it takes over (``continued`` in the log), never judged on figures it did not see.

Each tick (a second) it reads the rollouts from the registry and the latest figures every
gateway published (:class:`~aimesh.rollouts.Tally`), and for each running canary calls
:func:`~aimesh.rollouts.judge` with the figures since its step began. A decision is
written with the revision it was judged at (a change by an operator in between wins: the
controller judges again on the next tick). A promotion moves the canary's alias to the
candidate in the transaction that records it (:data:`aimesh.registry.ROLLOUTS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aimesh.auth import Keyring
from aimesh.bus import Bus, Lease
from aimesh.errors import AimeshError, Conflict, LeaseHeld
from aimesh.registry import ROLLOUTS, Record, Registry
from aimesh.rest import ASGIScope, Guard, ProbeApp, Readiness, Receive, Send, bus_check
from aimesh.rollouts import FIGURES_SUBJECT, Canary, Report, Rollout, Tally, judge

__all__ = ["LEASE_KEY", "Controller", "controller_probe"]

log = logging.getLogger("aimesh.rollouts")

LEASE_KEY = "rollout-controller"
_TICK_S = 1.0
_LIST_PAGE = 500


def _now() -> datetime:
    return datetime.now(UTC)


class Controller:
    """Judges running canaries against the figures gateways publish; see the module."""

    def __init__(
        self,
        registry: Registry,
        bus: Bus,
        *,
        tick_s: float = _TICK_S,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._registry = registry
        self.bus = bus
        self._tick_s = tick_s
        self._clock = clock
        self.tally = Tally()
        # The figures at the start of each step this controller judges: (model, step, began).
        self._starts: dict[
            tuple[str, int, datetime | None], tuple[dict[str, Report], datetime]
        ] = {}
        self.decisions = 0
        """Decisions written so far."""
        self.active = False
        """Whether it holds the lease and judges now (else it stands by)."""
        self.ticks = 0
        """Ticks run while active."""

    async def run(self, stop: asyncio.Event) -> None:
        """Work while holding the lease, wait for it otherwise, until ``stop`` is set."""
        while not stop.is_set():
            lease = Lease(self.bus, LEASE_KEY, what="the rollout controller")
            try:
                await lease.acquire()
            except (LeaseHeld, AimeshError) as exc:
                log.debug("not the controller now: %s", exc.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._tick_s * 2)
                continue
            log.info("controller: judging rollouts")
            try:
                await self._work(stop, lease.lost)
            finally:
                await lease.release()
            if lease.lost.is_set():
                log.warning("controller: the lease was lost; standing by")
                self._starts.clear()

    async def _work(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        sub = await self.bus.nc.subscribe(f"{FIGURES_SUBJECT}.>", cb=self._heard)
        self.active = True
        try:
            while not stop.is_set() and not lost.is_set():
                try:
                    await self.tick()
                except AimeshError as exc:
                    log.warning("controller: this tick failed (%s); trying again", exc.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._tick_s)
        finally:
            self.active = False
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _heard(self, msg: Msg) -> None:
        self.tally.hear(msg.data)

    async def tick(self) -> None:
        """Judge every running canary once."""
        self.ticks += 1
        records = await asyncio.to_thread(self._running)
        snapshot = self.tally.snapshot()
        seen = set()
        for record in records:
            rollout = record.spec
            key = (rollout.model, rollout.status.step, rollout.status.step_started)
            seen.add(key)
            await self._judge(record, key, snapshot)
        for key in set(self._starts) - seen:
            del self._starts[key]

    def _running(self) -> list[Record[Rollout]]:
        found: list[Record[Rollout]] = []
        after: str | None = None
        while True:
            page = self._registry.list_records(ROLLOUTS, limit=_LIST_PAGE, after=after)
            found += [
                r for r in page
                if isinstance(r.spec.policy, Canary) and r.spec.status.state == "running"
            ]  # fmt: skip
            if len(page) < _LIST_PAGE:
                return found
            after = page[-1].name

    async def _judge(
        self,
        record: Record[Rollout],
        key: tuple[str, int, datetime | None],
        snapshot: dict[str, Report],
    ) -> None:
        rollout = record.spec
        policy = rollout.policy
        assert isinstance(policy, Canary)
        now = self._clock()
        start = self._starts.get(key)
        if start is None:
            began = rollout.status.step_started or now
            if (now - began).total_seconds() > self._tick_s * 3:
                log.info("controller: %s continued at step %d; its interval begins again",
                         rollout.model, rollout.status.step)  # fmt: skip
                began = now
            self._starts[key] = (snapshot, began)
            return
        before, began = start
        candidate = Tally.interval(before, snapshot, rollout.model, str(policy.candidate))
        baseline = Tally.interval(before, snapshot, rollout.model, str(policy.baseline))
        judged_as = rollout.model_copy(
            update={"status": rollout.status.model_copy(update={"step_started": began})}
        )
        after = judge(judged_as, candidate, baseline, now)
        if after is None:
            return
        await asyncio.to_thread(self._record, record, after)

    def _record(self, record: Record[Rollout], after: Rollout) -> None:
        policy = after.policy
        assert isinstance(policy, Canary)
        decision = after.status.decisions[-1]
        try:
            # A promotion moves the alias in the same transaction (the rollout kind's hook).
            self._registry.replace_record(ROLLOUTS, after.model, after, revision=record.revision)
        except Conflict:
            log.info("controller: %s changed meanwhile; judged again next tick", after.model)
            return
        self.decisions += 1
        log.info(
            "rollout %s: %s at %d%% - %s", after.model, decision.action, decision.weight,
            decision.reason,
            extra={"model": after.model, "action": decision.action, "figures": decision.figures},
        )  # fmt: skip


class _Figures(Collector):
    """The controller's counters, read when scraped."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.controller
        decisions = CounterMetricFamily(
            "aimesh_controller_decisions", "Rollout decisions written by this controller."
        )
        decisions.add_metric([], c.decisions)
        yield decisions
        active = GaugeMetricFamily(
            "aimesh_controller_active", "1 while this controller holds the lease and judges."
        )
        active.add_metric([], 1.0 if c.active else 0.0)
        yield active


def controller_probe(controller: Controller, keyring: Keyring, guard: Guard) -> ProbeApp:
    """The controller's health (the bus; its role in the body) and metrics."""
    metrics = CollectorRegistry(auto_describe=True)
    metrics.register(_Figures(controller))
    readiness = Readiness()
    readiness.require("bus", bus_check(lambda: controller.bus))
    return _RoleProbe(controller, readiness, metrics, keyring, guard=guard)


class _RoleProbe(ProbeApp):
    """A probe whose health body says whether the controller is active or standing by."""

    def __init__(self, controller: Controller, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._controller = controller

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        self.facts["role"] = "active" if self._controller.active else "standby"
        await super().__call__(scope, receive, send)

"""The supervisor behind ``aimesh up``: a stack of services as OS processes on one machine.

It holds the home's stack lock, finds (or starts) the bus, starts the processes stage by
stage (registry, model replicas, gateway), each waited on until ready, and records the
stack in ``HOME/run/stack.json``. A process that dies is restarted with backoff on the same
ports; its discovery entry is removed at once rather than left for the bucket's TTL. The
home's embedded bus is watched the same way: restarted on its port when it dies
(:mod:`aimesh.local.buswatch`). On SIGINT, SIGTERM or SIGHUP it stops watching, stops the
stages in reverse order (SIGTERM, drain, SIGKILL what is left), removes the state file and
releases the lock, whatever state the bus is in. The bus is left running: other processes
of the home may use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from aimesh.bus import Bus, bus_credentials, connect, declare_topology, ensure_bus, redact_url
from aimesh.config import Settings
from aimesh.errors import AimeshError
from aimesh.local.buswatch import BusWatch
from aimesh.local.control import clear_leftovers
from aimesh.local.discovery import forget_instances
from aimesh.local.plan import STAGES, ProcessSpec, plan_stack
from aimesh.local.process import ManagedProcess, RestartPolicy
from aimesh.local.state import (
    StackPhase,
    StackState,
    hold_stack_lock,
    read_state,
    remove_state,
    write_state,
)
from aimesh.observability import stop_on_signals

log = logging.getLogger("aimesh.local")

# Beyond the drain timeout: interpreter exit, closing the bus connection, leaving discovery.
STOP_MARGIN_S = 10.0
# Longest wait to clear a stopped process's discovery entries (within STOP_MARGIN_S): the
# bucket's TTL (6 s) does it anyway, so a bus that does not answer must not hold up a stop
# or a restart. A lost bus is not waited for at all.
_FORGET_S = 3.0


class Supervisor:
    """Runs the processes a project declares until told to stop; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_file: Path | None,
        ready_timeout_s: float = 60.0,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.config_file = config_file.resolve() if config_file is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.policy = policy or RestartPolicy()
        self.state = StackState(
            supervisor_pid=os.getpid(),
            started=datetime.now(UTC),
            home=str(self.home),
            config_file=str(self.config_file) if self.config_file else None,
        )
        self._processes: list[ManagedProcess] = []
        self._bus: Bus | None = None
        self._bus_watch: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()

    def child_env(self) -> dict[str, str]:
        """The environment of every child: this one, pointed at the same home and project."""
        env = dict(os.environ)
        env["AIMESH_HOME"] = str(self.home)
        if self.config_file is not None:
            env["AIMESH_CONFIG"] = str(self.config_file)
        return env

    @property
    def stop_grace_s(self) -> float:
        """How long stopping may take before the watchdog ends the supervisor: every stage."""
        return len(STAGES) * (self.settings.serving.drain_timeout_s + STOP_MARGIN_S) + 30.0

    def request_stop(self) -> None:
        """Stop the stack (what SIGINT and SIGTERM do); a second request stops without drain."""
        if self._stop.is_set():
            log.warning("stopping now, without waiting for requests to drain")
            self._hurry.set()
        self._stop.set()

    async def run(self, on_running: Callable[[StackState], Awaitable[None]] | None = None) -> None:
        """Start everything, call ``on_running`` once all is ready, and run until stopped.

        Raises :class:`~aimesh.errors.Conflict` if a stack already runs for this home, and
        the error of a process that could not start (after stopping the others).
        """
        with hold_stack_lock(self.home):
            # Before planning: what a dead supervisor left may still hold the ports.
            await clear_leftovers(self.home, read_state(self.home), self.settings)
            self._processes = [self._managed(spec) for spec in plan_stack(self.settings)]
            self._save()
            # A second signal stops the processes without drain; a third exits at once.
            stop_on_signals(
                self.request_stop,
                what="the stack",
                grace_s=self.stop_grace_s,
                hurry=self.request_stop,
                signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            )
            try:
                await self._until_stopped(on_running)
            finally:
                self._set_phase("stopping")
                if self._bus_watch is not None:
                    self._bus_watch.cancel()  # a stopping stack restarts nothing
                    await asyncio.gather(self._bus_watch, return_exceptions=True)
                await self._stop_all()
                bus_up = self._bus is not None and self._bus.connected
                if self._bus is not None:
                    await self._bus.close()
                remove_state(self.home)
                if bus_up:
                    log.info("stack stopped; the bus keeps running (`aimesh bus stop` stops it)")
                else:
                    log.info("stack stopped")

    async def _until_stopped(
        self, on_running: Callable[[StackState], Awaitable[None]] | None
    ) -> None:
        startup = asyncio.create_task(self._start_all(), name="startup")
        stopped = asyncio.create_task(self._stop.wait(), name="stop-requested")
        try:
            await asyncio.wait([startup, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not startup.done():
                log.info("stop requested while starting")
                return
            startup.result()  # raises why a process could not start
            self._set_phase("running")
            if on_running is not None:
                await on_running(self.state)
            await stopped
        finally:
            for task in (startup, stopped):
                task.cancel()
            await asyncio.gather(startup, stopped, return_exceptions=True)

    async def _start_all(self) -> None:
        url = await asyncio.to_thread(ensure_bus, self.settings)
        # The state file is no place for a password an external bus URL may carry.
        self.state.bus_url = redact_url(url)
        self._save()
        self._bus = await connect(
            url,
            timeout=self.settings.bus.connect_timeout_s,
            name="aimesh-supervisor",
            credentials=bus_credentials(self.settings),
            limits=self.settings.bus,
        )
        await declare_topology(self._bus)
        log.info("bus at %s", self._bus.url)
        self._bus_watch = asyncio.create_task(
            BusWatch(self.settings, self._bus).run(), name="bus-watch"
        )
        for stage in STAGES:
            # Replicas of a stage start together; the next stage waits for all of them.
            starting = [
                asyncio.create_task(p.start(), name=f"start-{p.spec.name}")
                for p in self._processes
                if p.spec.kind == stage
            ]
            try:
                await asyncio.gather(*starting)
            finally:
                # One failed (or we were cancelled): the others stop waiting too.
                for task in starting:
                    task.cancel()
                await asyncio.gather(*starting, return_exceptions=True)

    async def _stop_all(self) -> None:
        timeout_s = self.settings.serving.drain_timeout_s + STOP_MARGIN_S
        for stage in reversed(STAGES):
            stage_processes = [p for p in self._processes if p.spec.kind == stage]
            await asyncio.gather(*(p.stop(timeout_s, self._hurry) for p in stage_processes))

    def _managed(self, spec: ProcessSpec) -> ManagedProcess:
        return ManagedProcess(
            spec,
            env=self.child_env(),
            ready_timeout_s=self.ready_timeout_s,
            policy=self.policy,
            on_change=self._save,
            on_exit=self._forget,
        )

    async def _forget(self, spec: ProcessSpec, pid: int) -> None:
        """Remove a dead process's discovery entries now, so nothing routes to it meanwhile.

        Without the bus (or when it does not answer within ``_FORGET_S``) the entries are
        left to expire with the bucket's TTL.
        """
        if self._bus is None or not self._bus.connected:
            return
        try:
            await asyncio.wait_for(
                forget_instances(self._bus, ports={spec.http_port}, pids={pid}), _FORGET_S
            )
        except TimeoutError:
            log.info(
                "%s's discovery entries are left to expire (the bus did not answer)", spec.name
            )
        except AimeshError as exc:
            log.warning("could not clear %s from discovery: %s", spec.name, exc.message)

    def _set_phase(self, phase: StackPhase) -> None:
        self.state.phase = phase
        self._save()

    def _save(self) -> None:
        self.state.processes = [p.state for p in self._processes]
        write_state(self.home, self.state)

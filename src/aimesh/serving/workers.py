"""``--workers N``: a parent process that runs N workers on the same ports, and restarts them.

Each worker is a fresh interpreter (spawn) binding the ports with SO_REUSEPORT, so the
kernel spreads connections over them and one model uses every core. The parent holds no
model; it forwards SIGTERM/SIGINT, restarts a worker that dies (with backoff), and sets up
``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics`` sums every worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from aimesh.config import Settings
from aimesh.observability import run_service, stop_on_signals
from aimesh.serving.server import WorkerPlan, run_worker, stop_grace_s

log = logging.getLogger("aimesh.serving")


def free_port(host: str) -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _worker_main(settings_json: str, plan: WorkerPlan) -> None:
    from aimesh.observability import configure_logging

    # A Ctrl-C in the terminal reaches the whole group; the parent answers it by sending
    # each worker one SIGTERM (a worker counting both would exit at once, without draining).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    run_service(run_worker(settings, plan))


def serve(settings: Settings, plan: WorkerPlan) -> None:
    """Serve ``plan`` with ``plan.workers`` processes; return after a clean shutdown."""
    if plan.workers == 1:
        run_service(run_worker(settings, plan))
        return
    plan = WorkerPlan(
        ref=plan.ref,
        host=plan.host,
        http_port=plan.http_port or free_port(plan.host),
        grpc_port=plan.grpc_port or free_port(plan.host),
        workers=plan.workers,
        instance_id=plan.instance_id,
    )
    metrics_dir = settings.home_dir / "run" / f"serve-{os.getpid()}" / "metrics"
    _fresh_dir(metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        _supervise(settings, plan)
    finally:
        shutil.rmtree(metrics_dir.parent, ignore_errors=True)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _supervise(settings: Settings, plan: WorkerPlan) -> None:
    context = multiprocessing.get_context("spawn")
    settings_json = settings.model_dump_json()
    stopping = False

    def start(index: int) -> BaseProcess:
        worker_plan = WorkerPlan(
            ref=plan.ref,
            host=plan.host,
            http_port=plan.http_port,
            grpc_port=plan.grpc_port,
            workers=plan.workers,
            index=index,
            instance_id=plan.instance_id,
        )
        proc = context.Process(
            target=_worker_main, args=(settings_json, worker_plan), name=f"worker-{index}"
        )
        proc.start()
        return proc

    def send(sig: signal.Signals) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    def stop() -> None:
        nonlocal stopping
        stopping = True
        send(signal.SIGTERM)

    def hurry() -> None:
        send(signal.SIGKILL)
        os._exit(128 + signal.SIGINT)

    procs: list[BaseProcess] = []
    stop_on_signals(
        stop, what=f"{plan.ref} ({plan.workers} workers)", grace_s=stop_grace_s(settings) + 5,
        hurry=hurry,
    )  # fmt: skip
    procs += [start(i) for i in range(plan.workers)]
    restarts = [0] * plan.workers
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                restarts[i] += 1
                delay = min(0.5 * 2 ** (restarts[i] - 1), 30.0)
                log.warning(
                    "worker %d exited with %s; restarting in %.1fs", i, proc.exitcode, delay
                )
                time.sleep(delay)
                procs[i] = start(i)
    deadline = time.monotonic() + settings.serving.drain_timeout_s + 10
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()

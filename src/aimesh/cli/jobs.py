"""``aimesh jobs`` and ``aimesh worker``: asynchronous jobs on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.markup import escape
from rich.table import Table

from aimesh.cli._app import (
    Insecure,
    ProbeHost,
    ProbePort,
    check_exposure,
    console,
    err_console,
    handle_errors,
    serve_service_app,
    settings,
)
from aimesh.config import Settings
from aimesh.errors import InvalidRequest, JobFailed

if TYPE_CHECKING:
    from aimesh.auth import Keyring
    from aimesh.jobs import Handler, Job, JobClient, JobState, WorkerStats

T = TypeVar("T")

app = typer.Typer(
    help="Asynchronous jobs: submit, list, show, watch, fetch results, cancel, retry; serve "
    "their REST API. Workers run with `aimesh worker KIND`.",
    no_args_is_help=True,
)

_STATE_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


def _with_client(config: Settings, call: Callable[[JobClient], Awaitable[T]]) -> T:
    """Run ``call`` with a job client on the bus of ``config``."""
    from aimesh.bus import open_bus
    from aimesh.jobs import JobClient

    async def run() -> T:
        async with await open_bus(config, name="aimesh-cli") as bus:
            client = await JobClient.open(bus, config.jobs)
            try:
                return await call(client)
            finally:
                await client.close()

    return asyncio.run(run())


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _state(job: Job) -> str:
    style = _STATE_STYLE.get(job.state, "")
    suffix = " (cancel requested)" if job.cancel_requested and job.state == "running" else ""
    return f"[{style}]{job.state}[/{style}]{suffix}"


def _print_job(job: Job) -> None:
    """The job as a table; what handlers and users wrote is escaped (never read as markup)."""
    import msgspec

    rows: list[tuple[str, str]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("state", _state(job)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("progress", f"{job.progress:.0%}  {escape(job.progress_message or '')}".rstrip()),
        ("worker", escape(job.worker or "-")),
        ("created", _when(job.created)),
        ("started", _when(job.started)),
        ("finished", _when(job.finished)),
    ]
    if job.idempotency_key:
        rows.append(("idempotency key", escape(job.idempotency_key)))
    if job.retry_of:
        rows.append(("retry of", job.retry_of))
    if job.error is not None:
        error = f"{escape(job.error.message)} ({escape(job.error.code)})"
        rows.append(("error", f"[red]{error}[/red]"))
    if job.result is not None:
        rows.append(("result", escape(msgspec.json.encode(job.result).decode())))
    if job.result_ref:
        rows.append(("result ref", escape(job.result_ref)))
    rows.append(("payload", escape(msgspec.json.encode(job.payload).decode())))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _print_json(value: object) -> None:
    import msgspec

    typer.echo(msgspec.json.encode(value).decode())


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _queue_and_show(
    queue: Callable[[JobClient], Awaitable[Job]], *, wait: bool, as_json: bool
) -> None:
    """Queue a job with ``queue``; print its id, or with ``wait`` wait for it and show it.

    Exits 1 when a job waited for did not succeed.
    """

    async def run(client: JobClient) -> Job:
        job = await queue(client)
        if not wait:
            return job
        with contextlib.suppress(JobFailed):  # shown below, with its error
            await client.wait(job.id)
        return await client.get(job.id)

    job = _with_client(settings(), run)
    if as_json:
        _print_json(job)
    elif wait:
        _print_job(job)
    else:
        console.print(job.id, highlight=False)
    if wait and job.state != "succeeded":
        raise typer.Exit(1)


@app.command("list")
@handle_errors
def list_jobs(
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    state: Annotated[
        str | None,
        typer.Option(
            help="Only jobs in this state: queued, running, succeeded, failed, cancelled."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    if state is not None and state not in _STATE_STYLE:
        raise InvalidRequest(f"unknown state {state!r}; one of {', '.join(_STATE_STYLE)}")
    wanted = cast("JobState | None", state)
    jobs = _with_client(settings(), lambda c: c.list(kind=kind, state=wanted, limit=limit))
    if as_json:
        _print_json(jobs)
        return
    if not jobs:
        console.print("no jobs", style="dim")
        return
    table = Table("id", "kind", "state", "attempts", "progress", "created", "finished")
    for job in jobs:
        table.add_row(
            job.id,
            job.kind,
            _state(job),
            f"{job.attempts}/{job.max_attempts}",
            f"{job.progress:.0%}",
            _when(job.created),
            _when(job.finished),
        )
    console.print(table)


@app.command()
@handle_errors
def show(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a job: its state, progress, attempts, error or result."""
    job = _with_client(settings(), lambda c: c.get(job_id))
    if as_json:
        _print_json(job)
    else:
        _print_job(job)


@app.command()
@handle_errors
def result(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the result here instead of printing it."),
    ] = None,
) -> None:
    """A finished job's result: an async inference's answer as the model gave it, or JSON.

    Fails with job_pending while the job runs, job_failed if it failed, result_expired a
    day after a stored result was written.
    """
    from aimesh.jobs import Blob, JobData, job_result

    async def fetch(client: JobClient) -> Blob:
        return await job_result(client, await JobData.open(client.bus), job_id)

    blob = _with_client(settings(), fetch)
    if output is not None:
        output.write_bytes(blob.body)
        console.print(f"wrote {len(blob.body)} bytes ({blob.content_type}) to {output}")
    elif blob.content_type.startswith("application/json"):
        console.print_json(blob.body.decode())
    else:
        err_console.print(
            f"the result is {blob.content_type} ({len(blob.body)} bytes): use --output FILE"
        )
        raise typer.Exit(1)


@app.command()
@handle_errors
def watch(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each event as a line of JSON.")
    ] = False,
) -> None:
    """Follow a job: its state now, then each change as it happens, until it ends.

    Exits 0 if the job succeeded, 1 if it failed or was cancelled.
    """
    from aimesh.bus import JobEvent
    from aimesh.jobs import TERMINAL

    def show(event: JobEvent) -> None:
        if as_json:
            _print_json(event)
            return
        style = _STATE_STYLE.get(event.state, "")
        progress = f"{event.progress:.0%}" if event.progress is not None else ""
        said = escape(event.message or "")
        if event.error_message:
            said = f"[red]{escape(event.error_message)}[/red] ({escape(event.error_code or '')})"
        console.print(
            f"{_when(event.at)}  [{style}]{event.change:<16}[/{style}] "
            f"attempt {event.attempt}  {progress:>4}  {said}".rstrip()
        )

    async def follow(client: JobClient) -> JobEvent | None:
        last = None
        async for event in client.watch(job_id):
            if event is not None:
                show(event)
                last = event
        return last

    last = _with_client(settings(), follow)
    if last is not None and last.state not in TERMINAL:
        err_console.print(f"job {job_id}: its record is gone (expired or deleted)")
    if last is None or last.state != "succeeded":
        raise typer.Exit(1)


@app.command()
@handle_errors
def retry(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="A failed or cancelled job.")],
    wait: Annotated[bool, typer.Option(help="Wait for the new job to end and show it.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a failed or cancelled job again, as a new job; print its id.

    The new job has the same kind, payload, attempts, timeout and webhook, and names the
    old one (retry_of). Find failed jobs with `aimesh jobs list --state failed`.
    """
    _queue_and_show(lambda client: client.retry(job_id), wait=wait, as_json=as_json)


@app.command()
@handle_errors
def cancel(job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id.")]) -> None:
    """Cancel a job: a queued one at once, a running one as soon as its worker sees it."""
    job = _with_client(settings(), lambda c: c.cancel(job_id))
    if job.state == "cancelled":
        console.print(f"job {job.id} cancelled")
    else:
        console.print(f"job {job.id}: cancel requested; its worker stops it shortly")


@app.command()
@handle_errors
def submit(
    kind: Annotated[str, typer.Argument(help="The job's kind (noop, sleep, or a registered one).")],
    payload: Annotated[str, typer.Option(help="The payload, a JSON object.")] = "{}",
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: submitting again returns the same job.")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, max=100, help="Attempts (default: jobs.max_attempts).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds an attempt may run.")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option(help="URL called (POST, signed) when the job ends.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end and show it.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job and print its id (with --wait: wait for it and show it)."""
    from aimesh.jobs import JobSpec

    try:
        data: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("--payload must be a JSON object")
    spec = JobSpec(
        kind=kind,
        payload=data,
        idempotency_key=key,
        max_attempts=max_attempts,
        timeout_s=timeout,
        webhook_url=webhook,
    )
    _queue_and_show(lambda client: client.submit(spec), wait=wait, as_json=as_json)


@app.command()
@handle_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: jobs.host).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind (default: jobs.port, 8300).")
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Serve the jobs REST API (/api/jobs, with SSE per job), docs at /docs."""
    from aimesh.jobs.app import create_app

    jobs = settings().jobs
    serve_service_app(
        "jobs API",
        create_app,
        host=host or jobs.host,
        port=jobs.port if port is None else port,
        insecure=insecure,
        grace_s=5,
    )


@handle_errors
def worker(
    kind: Annotated[str, typer.Argument(help="The kind of job to run.")],
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Jobs run at once (default: jobs.concurrency)."),
    ] = None,
    handler: Annotated[
        str | None,
        typer.Option(
            help="The handler, module:function (default: the one registered for KIND, "
            "or a built-in one: noop, sleep, training, inference)."
        ),
    ] = None,
    host: ProbeHost = "127.0.0.1",
    port: ProbePort = None,
    threads: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Native threads for models (default: jobs.threads)."),
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Run jobs of one kind until Ctrl-C, then drain: finish running jobs or hand them back.

    With --port, /health answers 200 while the worker pulls jobs and /metrics counts them.
    """
    from aimesh.jobs import get_handler, load_handler
    from aimesh.observability import configure_logging
    from aimesh.runtimes import cap_threads, share_of_cores

    config = settings()
    configure_logging(config.log_level, config.log_format)
    if port is not None:
        check_exposure(config, host, f"worker {kind}", insecure=insecure)
    # before a handler imports a model library: those read the cap when they load
    cap = cap_threads(threads or config.jobs.threads or share_of_cores(1))
    logging.getLogger("aimesh.jobs").info("native threads capped at %d", cap)
    run = load_handler(handler) if handler is not None else get_handler(kind)
    stats = asyncio.run(_run_worker(config, kind, run, concurrency, (host, port)))
    err_console.print(
        f"worker stopped: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.retried} retried, {stats.cancelled} cancelled, {stats.released} handed back",
        highlight=False,
    )


async def _run_worker(
    config: Settings,
    kind: str,
    handler: Handler,
    concurrency: int | None,
    listen: tuple[str, int | None],
) -> WorkerStats:
    from aimesh.observability import cancel_and_wait
    from aimesh.registry import KeyWatch

    keys = await asyncio.to_thread(KeyWatch, config)
    keeping_keys = asyncio.create_task(keys.run(), name="keys")
    try:
        return await _work(config, kind, handler, concurrency, listen, keys.keyring)
    finally:
        await cancel_and_wait([keeping_keys], 5.0)


async def _work(
    config: Settings,
    kind: str,
    handler: Handler,
    concurrency: int | None,
    listen: tuple[str, int | None],
    keyring: Keyring,
) -> WorkerStats:
    from aimesh.bus import Registration, declare_topology, describe_service, open_bus
    from aimesh.jobs import Worker
    from aimesh.jobs.health import serve_health
    from aimesh.observability import stop_on_signals

    async with await open_bus(config, name=f"worker-{kind}") as bus:
        await declare_topology(bus)
        job_worker = Worker(bus, kind, handler, settings=config.jobs, concurrency=concurrency)
        health: asyncio.Task[None] | None = None
        rest_url = None
        host, port = listen
        if port is not None:
            health, bound = await serve_health(job_worker, host, port, keyring, config.auth)
            rest_url = f"http://{host}:{bound}"
            console.print(f"health and metrics on {rest_url}", highlight=False)
        describe = describe_service(
            "worker", kind, rest_url=rest_url, workers=job_worker.concurrency,
            instance_id=job_worker.id,
        )  # fmt: skip
        registration = Registration(bus, describe, interval_s=config.serving.heartbeat_s)
        await registration.start()

        def drain() -> None:
            err_console.print(
                f"draining: finishing running jobs (up to {config.jobs.drain_timeout_s:g}s); "
                "Ctrl-C again to hand them back now",
                highlight=False,
            )
            job_worker.stop(hand_back=False)

        stop_on_signals(
            drain,
            what=f"worker {job_worker.id}",
            grace_s=config.jobs.drain_timeout_s + 30,
            hurry=lambda: job_worker.stop(hand_back=True),
        )
        console.print(
            f"worker {job_worker.id}: jobs of kind {kind}, {job_worker.concurrency} at a time "
            "(Ctrl-C to stop)",
            highlight=False,
        )
        try:
            await job_worker.run()
        finally:
            await registration.stop()
            if health is not None:
                health.cancel()
                await asyncio.gather(health, return_exceptions=True)
        return job_worker.stats

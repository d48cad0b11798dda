"""``aimesh train``: submit a training job (run by ``aimesh worker training``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from aimesh.cli._app import console, handle_errors, settings
from aimesh.errors import JobFailed

if TYPE_CHECKING:
    from aimesh.jobs import Job, JobClient


@handle_errors
def train(
    model: Annotated[str, typer.Argument(help="The model to register the result as.")],
    dataset: Annotated[
        str, typer.Option(help="The dataset snapshot, NAME@VERSION (NAME alone: latest, pinned).")
    ],
    trainer: Annotated[
        str,
        typer.Option(help="sklearn:ClassName (e.g. sklearn:LogisticRegression) or module:Class."),
    ],
    target: Annotated[str, typer.Option(help="The label column.")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Trainer parameter name=value (repeatable)."),
    ] = None,
    test_size: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Share of rows held out for metrics.")
    ] = 0.2,
    alias: Annotated[str | None, typer.Option(help="Alias to point at the new version.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the split.")] = 0,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: submitting again returns the same job.")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the job; print the version and its metrics.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="With --wait: give up after this many seconds.")
    ] = None,
) -> None:
    """Train MODEL on a dataset snapshot as a job, and register it as MODEL's next version."""
    from aimesh.cli.jobs import _with_client
    from aimesh.jobs import JobSpec
    from aimesh.training import TrainRequest, parse_params
    from aimesh.training.job import KIND

    request = TrainRequest(
        model=model,
        dataset=dataset,
        trainer=trainer,
        target=target,
        params=parse_params(param or []),
        test_size=test_size,
        alias=alias,
        seed=seed,
    )
    spec = JobSpec(kind=KIND, payload=request.payload(), idempotency_key=key)

    async def run(client: JobClient) -> Job:
        job = await client.submit(spec)
        if wait:
            console.print(f"job {job.id} submitted; waiting", highlight=False)
            with contextlib.suppress(JobFailed):  # reported below, with its error
                await client.wait(job.id, timeout=timeout)
            return await client.get(job.id)
        return job

    job = _with_client(settings(), run)
    if not wait:
        console.print(job.id, highlight=False)
        return
    if job.state != "succeeded":
        error = f": {job.error.message} ({job.error.code})" if job.error is not None else ""
        console.print(f"[red]job {job.id} {job.state}{error}[/red]", highlight=False)
        raise typer.Exit(1)
    result = job.result if isinstance(job.result, dict) else {}
    console.print(f"registered {result.get('model')}@{result.get('version')}", highlight=False)
    for name, value in sorted((result.get("metrics") or {}).items()):
        console.print(f"  {name}: {value:.4f}", highlight=False)

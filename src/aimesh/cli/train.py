"""``aimesh train``: submit a training job (run by ``aimesh worker training``).

::

    aimesh train fraud --dataset tx@0 --trainer xgboost:XGBClassifier --target label \
        --param n_estimators=200 --split column:is_test --metric auc --metric f1 --wait

The request (trainer syntax, split, metric names) is checked here, before it is submitted;
see :mod:`aimesh.training` for what each trainer, split and metric means.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from aimesh.cli._app import console, handle_errors, settings
from aimesh.errors import InvalidRequest, JobFailed
from aimesh.training.metrics import METRICS

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
        typer.Option(
            help="sklearn:ClassName (e.g. sklearn:LogisticRegression); xgboost:XGBClassifier, "
            "xgboost:XGBRegressor, lightgbm:LGBMClassifier, lightgbm:LGBMRegressor (saved "
            "natively; need aimesh\\[xgboost] / aimesh\\[lightgbm] on the worker); "
            "module.path:ClassName (an estimator class); or function:module.path:name, a "
            "function installed on the worker and decorated with @aimesh.training.trainer, "
            "called as name(x, y, params) and returning a fitted estimator."
        ),
    ],
    target: Annotated[str, typer.Option(help="The label column.")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Trainer parameter name=value (repeatable)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Rows held out for metrics: random:0.2 (stratified for classifiers; "
            "random:0.2:unstratified: never), column:is_test (rows where the column is true "
            "or non-zero) or column:fold=3 (rows where it equals the value); the split "
            "column is not a feature. Default: random with --test-size."
        ),
    ] = None,
    test_size: Annotated[
        float | None,
        typer.Option(min=0.01, max=0.99, help="Share of rows held out at random (default 0.2)."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help=f"Metric to compute (repeatable): {', '.join(METRICS)}. "
            "Default: every one that applies to the model.",
        ),
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Alias to point at the new version.")] = None,
    seed: Annotated[
        int, typer.Option(help="Random seed of the split and of the estimator (random_state).")
    ] = 0,
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
    from aimesh.training import Split, TrainRequest, parse_params
    from aimesh.training.job import KIND

    if split is not None and test_size is not None:
        raise InvalidRequest("give --split or --test-size, not both")
    request = TrainRequest(
        model=model,
        dataset=dataset,
        trainer=trainer,
        target=target,
        params=parse_params(param or []),
        split=Split.parse(split) if split is not None else Split(fraction=test_size or 0.2),
        metrics=tuple(metric or ()),
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
    framework = f" ({result['framework']})" if result.get("framework") else ""
    console.print(
        f"registered {result.get('model')}@{result.get('version')}{framework}", highlight=False
    )
    for name, value in sorted((result.get("metrics") or {}).items()):
        console.print(f"  {name}: {value:.4f}", highlight=False)
    for name, reason in sorted((result.get("skipped_metrics") or {}).items()):
        console.print(f"  {name}: skipped ({reason})", highlight=False)

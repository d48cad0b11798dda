"""The ``training`` job kind: read a snapshot, split, fit, evaluate, save natively, register."""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aimesh.auth import LOCAL_OPERATOR, Identity
from aimesh.errors import InvalidRequest, JobRejected, NotFound
from aimesh.training.formats import SavedModel, save_model
from aimesh.training.metrics import Scores, compute_metrics, plan_metrics
from aimesh.training.request import TrainRequest
from aimesh.training.split import split_rows
from aimesh.training.trainers import resolve_trainer

if TYPE_CHECKING:
    import pyarrow as pa

    from aimesh.config import Settings
    from aimesh.jobs import JobContext
    from aimesh.lake import DatasetRef
    from aimesh.registry import ModelVersion

__all__ = ["KIND", "train", "train_job"]

KIND = "training"
"""The job kind training runs as: ``aimesh worker training``."""


class _Stopped(RuntimeError):
    """The job was cancelled or its worker stops: the worker decides what becomes of it."""


def train(
    request: TrainRequest,
    settings: Settings,
    *,
    ctx: JobContext | None = None,
    job_id: str | None = None,
    identity: Identity = LOCAL_OPERATOR,
) -> dict[str, Any]:
    """Run ``request`` end to end on behalf of ``identity``; the job's result.

    Registering a version (and moving ``request.alias``) needs ``identity``'s write scope:
    :class:`~aimesh.errors.Forbidden` before anything is read otherwise. In a job, the
    registry push is a commit (:meth:`JobContext.commit`): an attempt past its deadline
    registers nothing, even when its fit returns later.
    """
    from sklearn.base import is_classifier

    from aimesh.registry import check_model_name

    def progress(fraction: float, message: str) -> None:
        if ctx is not None:
            if ctx.cancelled:
                raise _Stopped("training stopped")
            ctx.check(message)  # past its deadline: stop here (logged), do nothing more
            ctx.progress(fraction, message)

    def after_fit(fraction: float, message: str) -> None:
        # What is left after the fit is cheap; its one lasting step, the push, is fenced.
        if ctx is not None:
            ctx.progress(fraction, message)

    try:
        check_model_name(request.model)
    except InvalidRequest as exc:
        raise JobRejected(str(exc)) from exc
    identity.require("write")  # a version and perhaps an alias move, for whoever submitted
    trainer = resolve_trainer(
        request.trainer,
        request.params,
        seed=request.seed,
        allowed=settings.training.allowed_trainers,
    )
    if trainer.estimator is not None:  # a class: its metrics are checked before any work
        plan_metrics(request.metrics, trainer.estimator, request.trainer)

    progress(0.05, f"reading {request.dataset}")
    ref, table = _read(settings, request.dataset)
    classes = None if trainer.estimator is None else bool(is_classifier(trainer.estimator))
    train_rows, test_rows, features = split_rows(
        table, request.target, request.split, seed=request.seed, classes=classes, dataset=str(ref)
    )

    progress(0.2, f"fitting {request.trainer} on {len(train_rows)} rows of {ref}")
    estimator = trainer.fit(train_rows.x, train_rows.y)

    after_fit(0.7, f"evaluating on {len(test_rows)} rows")
    names = plan_metrics(request.metrics, estimator, request.trainer)
    scores = compute_metrics(names, estimator, test_rows.x, test_rows.y)

    after_fit(0.8, f"registering {request.model}")
    with tempfile.TemporaryDirectory(prefix="aimesh-train-") as folder:
        saved = save_model(estimator, Path(folder), request.model, request.trainer)
        extra = {
            "split": str(request.split),
            "features": features,
            "train_rows": len(train_rows),
            "test_rows": len(test_rows),
        }
        what = f"registering {request.model}" + (f" as @{request.alias}" if request.alias else "")
        with ctx.commit(what) if ctx is not None else contextlib.nullcontext():
            version = _push(settings, request, saved, ref, scores, job_id, extra, identity)
    if ctx is not None:  # committed: nothing after it may fail the job
        ctx.progress(1.0, f"registered {request.model}@{version.version}")
    result: dict[str, Any] = {
        "model": request.model,
        "version": version.version,
        "framework": saved.framework,
        "metrics": scores.values,
    }
    if scores.skipped:
        result["skipped_metrics"] = scores.skipped
    return result


def _read(settings: Settings, dataset: str) -> tuple[DatasetRef, pa.Table]:
    """The pinned reference of ``dataset`` and its rows."""
    from aimesh.lake import DatasetRef, open_lake

    lake = open_lake(settings)
    try:
        ref = lake.pin(DatasetRef.parse(dataset))
        return ref, lake.read(ref.name, ref.version)
    except NotFound as exc:
        raise JobRejected(str(exc)) from exc


def _push(
    settings: Settings,
    request: TrainRequest,
    saved: SavedModel,
    ref: DatasetRef,
    scores: Scores,
    job_id: str | None,
    extra: dict[str, Any],
    identity: Identity,
) -> ModelVersion:
    from aimesh.registry import Lineage, open_registry, push_model

    # For whoever submitted the job: the registry checks and records them, not the worker.
    on_behalf = identity if identity.kind != "operator" else None
    registry = open_registry(settings, on_behalf=on_behalf)
    try:
        return push_model(
            registry,
            request.model,
            saved.path,
            framework=saved.framework,
            aliases=[request.alias] if request.alias else [],
            metrics=scores.values,
            lineage=Lineage(
                dataset=str(ref),
                trainer=request.trainer,
                params=dict(request.params),
                code_version=_code_version(),
                job_id=job_id,
                extra=extra,
            ),
            trusted_types=list(saved.trusted_types),
        )
    finally:
        registry.close()


def _code_version() -> str:
    try:
        return importlib.metadata.version("aimesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def train_job(ctx: JobContext) -> dict[str, Any]:
    """The ``training`` job handler (a plain function: the worker runs it in a thread)."""
    from aimesh.config import load_settings

    request = TrainRequest.from_payload(ctx.payload)
    return train(request, load_settings(), ctx=ctx, job_id=ctx.job.id, identity=ctx.job.identity)

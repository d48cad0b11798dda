"""The metrics a training job can compute on its held-out rows, chosen by name.

Classifiers: ``auc``, ``accuracy``, ``f1``, ``log_loss``; regressors: ``rmse``, ``mae``,
``r2``. A job that names none gets every one that applies to its estimator; a job that
names one that cannot apply (``rmse`` of a classifier, ``log_loss`` of a model without
probabilities) is rejected, before fitting when the trainer is a class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aimesh.errors import JobRejected

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CLASSIFIER_METRICS", "METRICS", "REGRESSOR_METRICS", "Scores", "check_metrics"]

CLASSIFIER_METRICS = ("auc", "accuracy", "f1", "log_loss")
"""Metrics of classifiers."""
REGRESSOR_METRICS = ("rmse", "mae", "r2")
"""Metrics of regressors."""
METRICS = CLASSIFIER_METRICS + REGRESSOR_METRICS
"""Every metric name a job may ask for."""


def check_metrics(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` lower-cased and without repeats; :class:`JobRejected` naming an unknown one."""
    checked: list[str] = []
    for name in names:
        lowered = name.strip().lower()
        if lowered not in METRICS:
            raise JobRejected(f"unknown metric {name!r}; known: {', '.join(METRICS)}", metric=name)
        if lowered not in checked:
            checked.append(lowered)
    return tuple(checked)


@dataclass(frozen=True)
class Scores:
    """What evaluation gave: the scores, and why a metric that was not asked for is missing."""

    values: dict[str, float]
    skipped: dict[str, str]


def plan_metrics(requested: tuple[str, ...], estimator: Any, trainer: str) -> tuple[str, ...]:
    """The metrics to compute for ``estimator`` (fitted or not).

    Every applicable one when none were requested; :class:`JobRejected` when a requested
    one cannot apply.
    """
    from sklearn.base import is_classifier

    classifier = bool(is_classifier(estimator))
    kind, own = (
        ("classifier", CLASSIFIER_METRICS) if classifier else ("regressor", REGRESSOR_METRICS)
    )
    if not requested:
        return tuple(name for name in own if _missing_method(name, estimator) is None)
    for name in requested:
        if name not in own:
            raise JobRejected(
                f"metric {name} does not apply to {trainer}, a {kind} "
                f"(its metrics: {', '.join(own)})",
                metric=name,
            )
        missing = _missing_method(name, estimator)
        if missing is not None:
            raise JobRejected(
                f"metric {name} needs {missing}, which {type(estimator).__name__} lacks "
                f"(trainer {trainer})",
                metric=name,
            )
    return requested


def _missing_method(metric: str, estimator: Any) -> str | None:
    # getattr, not hasattr alone: scikit-learn hides methods that do not apply (SVC
    # without probability=True) behind a property that raises AttributeError.
    has_proba = callable(getattr(estimator, "predict_proba", None))
    if metric == "log_loss" and not has_proba:
        return "predict_proba"
    if metric == "auc" and not (
        has_proba or callable(getattr(estimator, "decision_function", None))
    ):
        return "predict_proba or decision_function"
    return None


def compute_metrics(names: tuple[str, ...], estimator: Any, x: np.ndarray, y: np.ndarray) -> Scores:
    """The scores of a fitted ``estimator`` on ``x``, ``y``; a metric the data cannot give
    (AUC with one class in the held-out rows) is skipped with its reason."""
    predicted = estimator.predict(x)
    values: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            value = _METRIC_FUNCTIONS[name](estimator, x, y, predicted)
        except ValueError as exc:
            skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        if math.isfinite(value):
            values[name] = value
        else:
            skipped[name] = f"not finite ({value})"
    return Scores(values, skipped)


def _accuracy(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn import metrics

    return float(metrics.accuracy_score(y, predicted))


def _f1(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    import numpy as np
    from sklearn import metrics

    # zero_division: a class never predicted scores 0 instead of warning.
    classes = np.unique(y)
    if len(classes) == 2 and 1 in classes:
        return float(metrics.f1_score(y, predicted, average="binary", pos_label=1, zero_division=0))
    return float(metrics.f1_score(y, predicted, average="macro", zero_division=0))


def _log_loss(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn import metrics

    proba = estimator.predict_proba(x)
    return float(metrics.log_loss(y, proba, labels=estimator.classes_))


def _auc(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    import numpy as np
    from sklearn import metrics

    if len(np.unique(y)) < 2:  # scikit-learn would warn and give NaN
        raise ValueError("only one class in the held-out rows")
    classes = estimator.classes_
    if callable(getattr(estimator, "predict_proba", None)):
        proba = estimator.predict_proba(x)
        if len(classes) == 2:
            return float(metrics.roc_auc_score(y, proba[:, 1]))
        return float(metrics.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    if len(classes) != 2:
        raise ValueError("AUC of more than two classes needs predict_proba")
    return float(metrics.roc_auc_score(y, estimator.decision_function(x)))


def _rmse(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn import metrics

    return math.sqrt(float(metrics.mean_squared_error(y, predicted)))


def _mae(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn import metrics

    return float(metrics.mean_absolute_error(y, predicted))


def _r2(estimator: Any, x: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn import metrics

    return float(metrics.r2_score(y, predicted))


_METRIC_FUNCTIONS: dict[str, Callable[[Any, Any, Any, Any], float]] = {
    "auc": _auc,
    "accuracy": _accuracy,
    "f1": _f1,
    "log_loss": _log_loss,
    "rmse": _rmse,
    "mae": _mae,
    "r2": _r2,
}

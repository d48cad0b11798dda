"""Serving an in-memory estimator with predict (and maybe predict_proba).

Shared by the sklearn (skops) and pickle runtimes: they differ only in how the estimator
is read from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from aimesh.errors import ArtifactError
from aimesh.runtimes._tabular import (
    Labels,
    Prediction,
    Probabilities,
    TabularRuntime,
    label_datatype,
)


def estimator_runtime(framework: str, path: Path, estimator: Any) -> TabularRuntime:
    """A tabular runtime around a fitted estimator, classifier or regressor."""
    predict = getattr(estimator, "predict", None)
    if not callable(predict):
        raise ArtifactError(
            f"{path.name} holds a {type(estimator).__name__}, which has no predict method",
            framework=framework,
        )
    if isinstance(estimator, BaseEstimator):
        try:
            check_is_fitted(estimator)
        except NotFittedError as exc:
            raise ArtifactError(
                f"{path.name} holds an unfitted {type(estimator).__name__}", framework=framework
            ) from exc
    n_features = getattr(estimator, "n_features_in_", None)
    n_features = None if n_features is None else int(n_features)
    classes = getattr(estimator, "classes_", None)
    # getattr, not hasattr: sklearn hides predict_proba behind a property that raises
    # AttributeError when it does not apply (SVC without probability=True).
    predict_proba = getattr(estimator, "predict_proba", None)
    if not (isinstance(classes, np.ndarray) and classes.ndim == 1):
        # No single 1-D classes_: a regressor (or a multi-output model served as one).
        return TabularRuntime(framework, n_features, Prediction(), predict)
    if callable(predict_proba):
        return TabularRuntime(framework, n_features, Probabilities(classes), predict_proba)
    return TabularRuntime(framework, n_features, Labels(label_datatype(classes)), predict)

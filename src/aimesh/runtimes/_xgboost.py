"""XGBoost Boosters saved as JSON or UBJSON (``.json``, ``.ubj``); loading runs no code.

The objective decides the outputs: ``binary:logistic`` and ``multi:softprob`` give
probabilities and labels, ``multi:softmax`` and ``binary:hinge`` give labels, everything
else (regression, ranking, survival, raw margins) gives ``prediction``. A raw Booster
knows classes only as indices 0..k-1, so labels are INT64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xgboost

from aimesh.protocol import Signature
from aimesh.runtimes._tabular import Head, Labels, Prediction, Probabilities, TabularRuntime
from aimesh.runtimes._threads import thread_cap
from aimesh.runtimes.base import Array, Trust, unreadable

FRAMEWORK = "xgboost"


def inspect(path: Path, trust: Trust) -> Signature:
    """The signature of a Booster file."""
    return load(path, trust).signature


def load(path: Path, trust: Trust) -> TabularRuntime:
    """Load a Booster file (trust is not needed: the format holds no code)."""
    try:
        # From bytes, not the path: given a path, xgboost picks JSON or UBJSON by its
        # extension and warns when there is none (artifact stores name blobs by digest).
        booster = xgboost.Booster(model_file=bytearray(path.read_bytes()))
        cap = thread_cap()
        if cap is not None:
            booster.set_param({"nthread": cap})  # its own OpenMP setting, read per call
        learner = json.loads(booster.save_config())["learner"]
        objective = str(learner["objective"]["name"])
        params = learner["learner_model_param"]
        head = _head(objective, int(params.get("num_class", 0)), int(params.get("num_target", 1)))
    except (xgboost.core.XGBoostError, OSError, ValueError, KeyError, TypeError) as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    # Match XGBClassifier.predict, which stops at the best round of early stopping.
    best = booster.attr("best_iteration")
    rounds = (0, int(best) + 1) if best is not None else (0, 0)

    def predict_raw(matrix: Array) -> Array:
        # inplace_predict skips building a DMatrix; feature names are not part of the
        # protocol, so only their count (checked before) is validated.
        return np.asarray(
            booster.inplace_predict(matrix, iteration_range=rounds, validate_features=False)
        )

    return TabularRuntime(FRAMEWORK, booster.num_features(), head, predict_raw)


def _head(objective: str, classes: int, targets: int) -> Head:
    if targets > 1:
        return Prediction(targets)
    if objective == "binary:logistic":
        return Probabilities(np.arange(2, dtype=np.int64))
    if objective == "multi:softprob":
        return Probabilities(np.arange(classes, dtype=np.int64))
    if objective in ("multi:softmax", "binary:hinge"):
        return Labels("INT64")
    return Prediction()

"""LightGBM Boosters saved as text models (``.txt``); loading runs no code.

``binary``, ``multiclass`` and ``multiclassova`` objectives give probabilities and
labels; every other objective gives ``prediction``. A raw Booster knows classes only as
indices 0..k-1, so labels are INT64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from aimesh.protocol import Signature
from aimesh.runtimes._tabular import Head, Prediction, Probabilities, TabularRuntime
from aimesh.runtimes._threads import thread_cap
from aimesh.runtimes.base import Array, Trust, unreadable

FRAMEWORK = "lightgbm"


def inspect(path: Path, trust: Trust) -> Signature:
    """The signature of a text model file."""
    return load(path, trust).signature


def load(path: Path, trust: Trust) -> TabularRuntime:
    """Load a text model file (trust is not needed: the format holds no code)."""
    try:
        booster = lightgbm.Booster(model_file=path)
    except (lightgbm.basic.LightGBMError, ValueError) as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc

    options: dict[str, Any] = {}
    cap = thread_cap()
    if cap is not None:
        options["num_threads"] = cap  # its own OpenMP setting, passed per call

    def predict_raw(matrix: Array) -> Array:
        return np.asarray(booster.predict(matrix, **options))

    return TabularRuntime(FRAMEWORK, booster.num_feature(), _head(booster), predict_raw)


def _head(booster: lightgbm.Booster) -> Head:
    # Loaded parameters hold canonical names ("multiclass", never the alias "softmax").
    objective = booster.params.get("objective")
    if objective == "binary":
        return Probabilities(np.arange(2, dtype=np.int64))
    if objective in ("multiclass", "multiclassova"):
        return Probabilities(np.arange(booster.num_model_per_iteration(), dtype=np.int64))
    return Prediction()

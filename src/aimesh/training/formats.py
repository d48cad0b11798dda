"""Saving a fitted estimator in the format its serving runtime loads without trust.

XGBoost models are saved as UBJSON Boosters (framework ``xgboost``), LightGBM models as
text Boosters (``lightgbm``), and everything else with skops (``sklearn``), trusting only
the types of scikit-learn, numpy and scipy. None of these formats runs code when loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimesh.errors import JobRejected

__all__ = ["SavedModel", "save_model"]

_OWN_LIBRARIES = frozenset({"sklearn", "numpy", "scipy"})
"""Libraries whose skops types a training worker trusts in a file it wrote itself."""


@dataclass(frozen=True)
class SavedModel:
    """A fitted estimator on disk, with what the registry needs to push it."""

    path: Path
    framework: str
    trusted_types: tuple[str, ...] = ()


def save_model(estimator: Any, folder: Path, name: str, trainer: str) -> SavedModel:
    """Save ``estimator`` into ``folder`` in its native format (skops for scikit-learn)."""
    if _is_instance(estimator, "xgboost", "XGBModel"):
        _check_class_indices(estimator, "xgboost", trainer)
        path = folder / f"{name}.ubj"
        estimator.save_model(path)
        return SavedModel(path, "xgboost")
    if _is_instance(estimator, "lightgbm", "LGBMModel"):
        _check_class_indices(estimator, "lightgbm", trainer)
        path = folder / f"{name}.txt"
        estimator.booster_.save_model(path)
        return SavedModel(path, "lightgbm")
    return _save_skops(estimator, folder / f"{name}.skops", trainer)


def _is_instance(estimator: Any, library: str, class_name: str) -> bool:
    # A library that was never imported cannot have made the estimator: no import needed.
    module = sys.modules.get(library)
    return module is not None and isinstance(estimator, getattr(module, class_name))


def _check_class_indices(estimator: Any, library: str, trainer: str) -> None:
    """A native Booster knows classes only as 0..k-1, so labels must be those to be served."""
    import numpy as np

    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return
    if not np.array_equal(np.asarray(classes), np.arange(len(classes))):
        shown = ", ".join(str(c) for c in list(classes)[:5])
        raise JobRejected(
            f"trainer {trainer}: the {library} format serves classes as 0..{len(classes) - 1}, "
            f"but the target holds {shown}; encode the target as 0..{len(classes) - 1}"
        )


def _save_skops(estimator: Any, path: Path, trainer: str) -> SavedModel:
    import skops.io as sio

    try:
        sio.dump(estimator, path)
    except TypeError as exc:
        raise JobRejected(f"trainer {trainer}: skops cannot save the model: {exc}") from exc
    # This worker made the file itself, so scikit-learn's own types in it are trusted;
    # a type from anywhere else stays untrusted (trust is the user's call, at push time,
    # never a worker's), so such a model is refused here rather than at push.
    found = sio.get_untrusted_types(file=path)
    foreign = [t for t in found if t.split(".", 1)[0] not in _OWN_LIBRARIES]
    if foreign:
        raise JobRejected(
            f"trainer {trainer}: the fitted {type(estimator).__name__} holds types that are "
            f"neither scikit-learn's, numpy's nor scipy's ({', '.join(sorted(foreign))}); "
            "a training job saves scikit-learn models with skops and XGBoost or LightGBM "
            "models natively, not inside another model"
        )
    return SavedModel(path, "sklearn", tuple(found))

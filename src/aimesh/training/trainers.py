"""What a job's ``trainer`` names, and how each kind of trainer fits.

- ``sklearn:ClassName``: any scikit-learn estimator, e.g. ``sklearn:LogisticRegression``.
- ``xgboost:XGBClassifier``, ``xgboost:XGBRegressor`` (any ``XGBModel``), and
  ``lightgbm:LGBMClassifier``, ``lightgbm:LGBMRegressor`` (any ``LGBMModel``): trained
  through their scikit-learn API; they need ``aimesh[xgboost]`` / ``aimesh[lightgbm]``.
- ``module.path:ClassName``: any estimator class importable on the worker.
- ``function:module.path:name``: a training function on the worker, marked with
  :func:`trainer`, called as ``name(x, y, params)`` and returning a fitted estimator.

Estimator classes are built with the job's params and fitted on the training rows. Jobs
only ever name code: the worker imports what is installed where it runs (installing it is
the operator's decision), and calls a function only when its author marked it a trainer,
so a job cannot call an arbitrary importable function such as ``os:system``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aimesh.errors import JobRejected

if TYPE_CHECKING:
    import numpy as np

    from aimesh.training.request import Scalar

__all__ = ["Trainer", "TrainerFunction", "resolve_trainer", "trainer"]

TrainerFunction = Callable[[Any, Any, dict[str, Any]], Any]
"""``fit(x, y, params) -> fitted estimator``: ``x`` the FP64 feature matrix (the dataset's
columns but the target and the split column, in order: what the served model gets as
``input-0``), ``y`` the target as a numpy array, ``params`` the job's params."""

F = TypeVar("F", bound=TrainerFunction)

_MARK = "__aimesh_trainer__"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_SYNTAX = (
    "sklearn:ClassName, xgboost:XGBClassifier, lightgbm:LGBMClassifier, module.path:ClassName "
    "or function:module.path:name"
)
_BOOSTERS = {
    # library: (its estimator base class, an example, the pip extra that installs it)
    "xgboost": ("XGBModel", "XGBClassifier", "aimesh[xgboost]"),
    "lightgbm": ("LGBMModel", "LGBMClassifier", "aimesh[lightgbm]"),
}


def trainer(function: F) -> F:
    """Mark ``function`` as a trainer that jobs may name as ``function:module.path:name``.

    ::

        from aimesh.training import trainer

        @trainer
        def fit(x, y, params):
            return LogisticRegression(C=float(params.get("C", 1.0))).fit(x, y)

    A function that declares a ``seed`` keyword is also given the job's seed, so that one
    job trains the same model every time: ``def fit(x, y, params, seed): ...``.
    """
    setattr(function, _MARK, True)
    return function


class Trainer(Protocol):
    """A resolved trainer: the estimator it will fit when known, and how it fits."""

    @property
    def spec(self) -> str:
        """What the job named, e.g. ``xgboost:XGBClassifier``."""
        ...

    @property
    def estimator(self) -> Any | None:
        """The unfitted estimator, when it is known before the data (a class trainer)."""
        ...

    def fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        """A fitted estimator for these rows; :class:`JobRejected` when they cannot fit."""
        ...


@dataclass(frozen=True)
class EstimatorTrainer:
    """An estimator class built with the job's params, fitted with ``fit(x, y)``."""

    spec: str
    estimator: Any

    def fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        """The estimator, fitted."""
        try:
            self.estimator.fit(x, y)
        except _fit_errors() as exc:
            raise JobRejected(f"{self.spec} cannot fit: {_first_line(exc)}") from exc
        return self.estimator


@dataclass(frozen=True)
class FunctionTrainer:
    """A marked function called with the rows and the job's params."""

    spec: str
    function: TrainerFunction
    params: dict[str, Scalar] = field(default_factory=dict)
    seed: int | None = None

    @property
    def estimator(self) -> None:
        """Unknown until the function returns."""
        return None

    def fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        """What the function returns, checked to be a fitted estimator."""
        try:
            if self.seed is not None and _takes_seed(self.function):
                fitted = self.function(x, y, dict(self.params), seed=self.seed)  # type: ignore[call-arg]
            else:
                fitted = self.function(x, y, dict(self.params))
        except _fit_errors(TypeError) as exc:
            raise JobRejected(f"trainer {self.spec} failed: {_first_line(exc)}") from exc
        _check_fitted(self.spec, fitted)
        return fitted


def resolve_trainer(
    spec: str, params: dict[str, Scalar] | None = None, *, seed: int | None = None
) -> Trainer:
    """The trainer ``spec`` names, ready to fit with ``params``; :class:`JobRejected` if none.

    With ``seed``, an estimator that takes a ``random_state`` and was given none gets the
    seed, so that one job trains the same model every time.
    """
    params = dict(params or {})
    prefix, sep, rest = spec.partition(":")
    if not sep or not prefix or not rest:
        raise JobRejected(f"trainer {spec!r} must be {_SYNTAX}")
    if prefix == "function":
        return FunctionTrainer(spec, _function(spec, rest), params, seed)
    if prefix == "sklearn":
        cls = _sklearn_class(spec, rest)
    elif prefix in _BOOSTERS:
        cls = _booster_class(spec, prefix, rest)
    else:
        cls = _imported(spec, prefix, rest)
        if not isinstance(cls, type) or not callable(getattr(cls, "fit", None)):
            raise JobRejected(f"trainer {spec!r} is not an estimator class (no fit method)")
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise JobRejected(f"trainer {spec}: bad parameters: {exc}") from exc
    if seed is not None and "random_state" not in params:
        get_params = getattr(estimator, "get_params", None)
        if callable(get_params) and "random_state" in get_params(deep=False):
            estimator.set_params(random_state=seed)
    return EstimatorTrainer(spec, estimator)


def _takes_seed(function: TrainerFunction) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C function without a signature
        return False
    return "seed" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _sklearn_class(spec: str, name: str) -> type[Any]:
    from sklearn.utils import all_estimators

    found: type[Any] | None = dict(all_estimators()).get(name)
    if found is None:
        raise JobRejected(f"unknown trainer {spec!r}: sklearn has no estimator {name!r}")
    return found


def _booster_class(spec: str, library: str, name: str) -> type[Any]:
    base_name, example, extra = _BOOSTERS[library]
    try:
        module = importlib.import_module(library)
    except ImportError as exc:
        raise JobRejected(
            f"trainer {spec} needs the {library} package on the worker: pip install '{extra}'"
        ) from exc
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, getattr(module, base_name))):
        raise JobRejected(
            f"unknown trainer {spec!r}: {library} has no estimator {name!r} "
            f"(a {base_name}, e.g. {library}:{example})"
        )
    return found


def _function(spec: str, path: str) -> TrainerFunction:
    module_name, sep, name = path.rpartition(":")
    if not sep or not _PATH.fullmatch(module_name) or not _NAME.fullmatch(name):
        raise JobRejected(f"trainer {spec!r} must be function:module.path:name")
    found = _imported(spec, module_name, name)
    if not callable(found) or not getattr(found, _MARK, False):
        raise JobRejected(
            f"trainer {spec}: {module_name}:{name} is not marked as a trainer "
            "(decorate it with @aimesh.training.trainer)"
        )
    function: TrainerFunction = found
    return function


def _imported(spec: str, module_name: str, name: str) -> Any:
    if not _PATH.fullmatch(module_name) or not _NAME.fullmatch(name):
        raise JobRejected(f"trainer {spec!r} must be {_SYNTAX}")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise JobRejected(f"unknown trainer {spec!r}: {exc}") from exc


def _check_fitted(spec: str, fitted: Any) -> None:
    """Refuse what is not a fitted estimator with scikit-learn's API."""
    if not (callable(getattr(fitted, "fit", None)) and callable(getattr(fitted, "predict", None))):
        raise JobRejected(
            f"trainer {spec} returned a {type(fitted).__name__}, not a fitted estimator "
            "(an object with fit and predict, such as a scikit-learn, XGBoost or LightGBM model)"
        )
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if isinstance(fitted, BaseEstimator):
        try:
            check_is_fitted(fitted)
        except NotFittedError as exc:
            raise JobRejected(
                f"trainer {spec} returned an unfitted {type(fitted).__name__}"
            ) from exc


def _fit_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """What fitting raises for bad data or parameters: a job that cannot succeed."""
    # scikit-learn's validation and XGBoostError are ValueErrors; LightGBMError is not.
    lightgbm = sys.modules.get("lightgbm")
    library: tuple[type[Exception], ...] = (
        () if lightgbm is None else (lightgbm.basic.LightGBMError,)
    )
    return (ValueError, *library, *more)


def _first_line(exc: BaseException) -> str:
    # Native libraries append C++ stack traces to their messages; the first line says it.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

"""What a job's ``trainer`` names, and how each kind of trainer fits.

- ``sklearn:ClassName``: any scikit-learn estimator, e.g. ``sklearn:LogisticRegression``.
- ``xgboost:XGBClassifier``, ``xgboost:XGBRegressor`` (any ``XGBModel``), and
  ``lightgbm:LGBMClassifier``, ``lightgbm:LGBMRegressor`` (any ``LGBMModel``): trained
  through their scikit-learn API; they need ``aimesh[xgboost]`` / ``aimesh[lightgbm]``.
- ``module.path:ClassName``: an estimator class the allow-list admits: scikit-learn's
  (``sklearn.*:*``, subclasses of ``BaseEstimator``), ``xgboost:XGB*``, ``lightgbm:LGBM*``,
  and whatever the operator adds in ``training.allowed_trainers`` (``module:Class`` or
  ``module:*`` patterns). Anything else is refused before its module is imported.
- ``function:module.path:name``: a training function on the worker, marked with
  :func:`trainer`, called as ``name(x, y, params)`` and returning a fitted estimator.

Estimator classes are built with the job's params and fitted on the training rows. Jobs
only ever name code: the worker imports what is installed where it runs (installing it is
the operator's decision), builds only allow-listed classes, and calls a function only when
its author marked it a trainer, so a job cannot call an arbitrary importable function such
as ``os:system``.

Params are plain scalars (numbers, bools, ``None``, short strings) and never name a file,
a folder or code (:func:`check_params`): some estimators take paths (scikit-learn's
``memory=``, a joblib cache that is unpickled later; LightGBM's ``output_model=``,
``forcedsplits_filename=``...) or objects, and a job must not reach the worker's files or
code through them. Refused by name (``memory``, ``callbacks``, anything named like a path,
file, folder, function, callback or class, LightGBM's file parameters) and by value (a
string that looks like a path or URL, or names an attribute of a loaded module such as
``os.system``). This is conservative on purpose: a legitimate value it refuses can be set
in a marked trainer function instead.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aimesh.errors import JobRejected

if TYPE_CHECKING:
    import numpy as np

    from aimesh.training.request import Scalar

__all__ = [
    "ALLOWED_TRAINERS",
    "Trainer",
    "TrainerFunction",
    "check_params",
    "resolve_trainer",
    "trainer",
]

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
ALLOWED_TRAINERS = ("sklearn.*:*", "xgboost:XGB*", "lightgbm:LGBM*")
"""The ``module:Class`` trainers every worker admits (``training.allowed_trainers`` adds)."""

# Parameters that take paths, files, folders, code or objects. By name: the exact names
# (joblib's memory; LightGBM's and XGBoost's file parameters and their aliases), then any
# name with one of these words as a part.
_REFUSED_NAMES = frozenset(
    {
        "memory", "cache", "callbacks", "callback", "checkpoint", "estimator",
        "base_estimator", "estimators", "steps", "transformers", "config", "data", "train",
        "valid", "test", "input_model", "model_input", "model_in", "output_model",
        "model_output", "model_out", "output_result", "predict_result", "prediction_result",
        "predict_name", "prediction_name", "pred_name", "name_prediction", "name_pred",
        "name_dump", "fmap", "fs", "forced_splits", "init_score", "machine_list", "mlist",
        "convert_model", "save_binary", "task",
    }
)  # fmt: skip
_REFUSED_PARTS = re.compile(
    r"(^|_)(path|paths|dir|dirs|directory|file|files|filename|fname|fn|func|function|"
    r"callable|callback|callbacks|hook|hooks|module|loader|url|uri|location)"
    r"($|_)"
)
_PARAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_MAX_TEXT = 200
_PATH_LIKE = re.compile(r"[/\\\x00]|^[~.]|^[A-Za-z]+:(//|[/\\])|^file:|%[0-9A-Fa-f]{2}")
_ATTRIBUTE = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[:.]([A-Za-z_][A-Za-z0-9_]*)"
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
    spec: str,
    params: dict[str, Scalar] | None = None,
    *,
    seed: int | None = None,
    allowed: Iterable[str] = (),
) -> Trainer:
    """The trainer ``spec`` names, ready to fit with ``params``; :class:`JobRejected` if none.

    ``allowed``: ``module:Class`` patterns admitted beside :data:`ALLOWED_TRAINERS` (the
    ``training.allowed_trainers`` setting). With ``seed``, an estimator that takes a
    ``random_state`` and was given none gets the seed, so that one job trains the same
    model every time.
    """
    params = dict(params or {})
    prefix, sep, rest = spec.partition(":")
    if not sep or not prefix or not rest:
        raise JobRejected(f"trainer {spec!r} must be {_SYNTAX}")
    check_params(spec, params)
    if prefix == "function":
        return FunctionTrainer(spec, _function(spec, rest), params, seed)
    if prefix == "sklearn":
        cls = _sklearn_class(spec, rest)
    elif prefix in _BOOSTERS:
        cls = _booster_class(spec, prefix, rest)
    else:
        cls = _allowed_class(spec, prefix, rest, tuple(allowed))
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise JobRejected(f"trainer {spec}: bad parameters: {exc}") from exc
    if seed is not None and "random_state" not in params:
        get_params = getattr(estimator, "get_params", None)
        if callable(get_params) and "random_state" in get_params(deep=False):
            estimator.set_params(random_state=seed)
    return EstimatorTrainer(spec, estimator)


def check_params(spec: str, params: dict[str, Scalar]) -> None:
    """Refuse (:class:`JobRejected`) params that name paths, files, folders or code."""
    for name, value in params.items():
        if not _PARAM_NAME.fullmatch(name):
            raise JobRejected(f"trainer {spec}: {name!r} is not a parameter name")
        lowered = name.lower()
        if lowered in _REFUSED_NAMES or _REFUSED_PARTS.search(lowered):
            raise JobRejected(
                f"trainer {spec}: parameter {name!r} is refused: jobs may not set parameters "
                "that take paths, files, folders, callables or objects (set it in a marked "
                "trainer function on the worker instead)"
            )
        if value is not None and not isinstance(value, bool | int | float | str):
            raise JobRejected(
                f"trainer {spec}: parameter {name!r} must be a number, a string, true/false "
                f"or null, not {type(value).__name__}"
            )
        if isinstance(value, str):
            _check_text(spec, name, value)


def _check_text(spec: str, name: str, value: str) -> None:
    if len(value) > _MAX_TEXT:
        raise JobRejected(f"trainer {spec}: parameter {name!r} is longer than {_MAX_TEXT}")
    if _PATH_LIKE.search(value):
        raise JobRejected(
            f"trainer {spec}: parameter {name}={value!r} is refused: it looks like a path or "
            "a URL, and jobs never name the worker's files"
        )
    named = _ATTRIBUTE.fullmatch(value)
    if named is not None:
        module = sys.modules.get(named.group(1))
        if module is not None and hasattr(module, named.group(2)):
            raise JobRejected(
                f"trainer {spec}: parameter {name}={value!r} is refused: it names code "
                f"({named.group(1)}.{named.group(2)}), and jobs only pass plain values"
            )


def _allowed_class(spec: str, module_name: str, name: str, allowed: tuple[str, ...]) -> type[Any]:
    """The ``module:Class`` estimator if the allow-list admits it; checked before importing."""
    if not _PATH.fullmatch(module_name) or not _NAME.fullmatch(name):
        raise JobRejected(f"trainer {spec!r} must be {_SYNTAX}")
    named = f"{module_name}:{name}"
    by_setting = any(fnmatch.fnmatchcase(named, pattern) for pattern in allowed)
    if not by_setting and not any(fnmatch.fnmatchcase(named, p) for p in ALLOWED_TRAINERS):
        raise JobRejected(
            f"trainer {spec!r} is not allowed: a module:Class trainer must be a scikit-learn, "
            "XGBoost or LightGBM estimator, or match training.allowed_trainers (a setting of "
            "the worker); or mark a function with @aimesh.training.trainer"
        )
    cls = _imported(spec, module_name, name)
    if not isinstance(cls, type) or not callable(getattr(cls, "fit", None)):
        raise JobRejected(f"trainer {spec!r} is not an estimator class (no fit method)")
    if not by_setting:  # sklearn.*:* (xgboost: and lightgbm: are resolved by their prefix)
        from sklearn.base import BaseEstimator

        if not issubclass(cls, BaseEstimator):
            raise JobRejected(f"trainer {spec!r} is not a scikit-learn estimator")
    found: type[Any] = cls
    return found


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
    if module_name.partition(".")[0] in sys.stdlib_module_names:
        raise JobRejected(
            f"trainer {spec}: {module_name}:{name} is not marked as a trainer (the standard "
            "library holds no trainers; its modules are not imported for a job)"
        )
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

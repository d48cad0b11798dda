"""Training's pure parts: trainer names, splits, metric choice, payloads and saved formats."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lightgbm import LGBMClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import LinearSVC
from xgboost import XGBClassifier

from _bad_paths import BAD_NAMES
from aimesh.errors import JobRejected
from aimesh.runtimes import load_runtime
from aimesh.training import Split, TrainRequest, parse_params, resolve_trainer, trainer
from aimesh.training.formats import save_model
from aimesh.training.metrics import check_metrics, compute_metrics, plan_metrics
from aimesh.training.split import split_rows

ROWS = 40


@trainer
def marked_fit(x: Any, y: Any, params: dict[str, Any]) -> Any:
    """A trainer function, as a user would write one."""
    return LogisticRegression(C=float(params.get("C", 1.0))).fit(x, y)


def unmarked_fit(x: Any, y: Any, params: dict[str, Any]) -> Any:
    """A function nobody marked as a trainer."""
    return LogisticRegression().fit(x, y)


@trainer
def seeded_fit(x: Any, y: Any, params: dict[str, Any], seed: int) -> Any:
    """A trainer function that asks for the job's seed."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=3, random_state=seed).fit(x, y)


@trainer
def returns_unfitted(x: Any, y: Any, params: dict[str, Any]) -> Any:
    """A trainer function that forgets to fit."""
    return LogisticRegression()


@trainer
def returns_a_number(x: Any, y: Any, params: dict[str, Any]) -> Any:
    """A trainer function that returns no estimator at all."""
    return 42


def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3))
    return pa.table(
        {
            "a": x[:, 0],
            "b": x[:, 1],
            "c": (x[:, 2] > 0),
            "label": (x[:, 0] > 0).astype(np.int64),
            "fold": np.arange(ROWS) % 4,
            "is_test": np.arange(ROWS) % 5 == 0,
            "part": np.where(np.arange(ROWS) < 30, "train", "test"),
        }
    )


@pytest.mark.parametrize(
    ("spec", "split"),
    [
        ("random:0.25", Split("random", fraction=0.25)),
        ("random:0.3:unstratified", Split("random", fraction=0.3, stratify=False)),
        ("column:is_test", Split("column", column="is_test")),
        ("column:fold=3", Split("column", column="fold", value="3")),
    ],
)
def test_split_specs_parse_and_print_back(spec: str, split: Split) -> None:
    assert Split.parse(spec) == split
    assert str(split) == spec


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("random:1.5", "must be in (0, 1)"),
        ("random:half", "not a fraction"),
        ("random:0.2:sideways", "unknown option"),
        ("column:", "names no column"),
        ("kfold:5", "must be random:FRACTION"),
    ],
)
def test_bad_split_specs_are_rejected_with_the_syntax(spec: str, says: str) -> None:
    with pytest.raises(JobRejected, match=re.escape(says)):
        Split.parse(spec)


@pytest.mark.parametrize(
    ("spec", "test_rows"),
    [("column:is_test", 8), ("column:fold=3", 10), ("column:part=test", 10)],
)
def test_a_column_split_holds_out_the_marked_rows_and_drops_the_column(
    spec: str, test_rows: int
) -> None:
    split = Split.parse(spec)
    train, test, features = split_rows(
        _table().drop_columns([c for c in ("fold", "is_test", "part") if c != split.column]),
        "label",
        split,
        seed=0,
        classes=True,
        dataset="t@0",
    )
    assert features == ["a", "b", "c"]
    assert (len(train), len(test)) == (ROWS - test_rows, test_rows)
    assert train.x.shape == (ROWS - test_rows, 3) and train.x.dtype == np.float64


def test_a_random_split_is_stratified_for_classes_and_seeded() -> None:
    table = _table().drop_columns(["fold", "is_test", "part"])
    split = Split("random", fraction=0.25)
    _, test, _ = split_rows(table, "label", split, seed=1, classes=True, dataset="t@0")
    _, again, _ = split_rows(table, "label", split, seed=1, classes=True, dataset="t@0")
    share = float(np.mean(table.column("label").to_numpy()))
    assert len(test) == 10
    assert abs(float(np.mean(test.y)) - share) <= 0.1
    assert np.array_equal(test.x, again.x)


@pytest.mark.parametrize(
    ("spec", "target", "says"),
    [
        ("column:nowhere", "label", "no split column 'nowhere'"),
        ("column:label", "label", "is the target"),
        ("column:part", "label", "name the test value"),
        ("column:fold=9", "label", "leaves no held-out rows"),
        ("column:fold=x", "label", "does not fit column 'fold'"),
        ("random:0.2", "nothing", "no target column 'nothing'"),
    ],
)
def test_splits_that_cannot_apply_are_rejected(spec: str, target: str, says: str) -> None:
    table = _table() if "part" in spec else _table().drop_columns(["part"])
    with pytest.raises(JobRejected, match=re.escape(says)):
        split_rows(table, target, Split.parse(spec), seed=0, classes=True, dataset="t@0")


def test_metric_names_are_checked_and_normalised() -> None:
    assert check_metrics(["AUC", "f1", "auc"]) == ("auc", "f1")
    with pytest.raises(JobRejected, match="unknown metric 'precision'; known: auc, accuracy"):
        check_metrics(["precision"])


@pytest.mark.parametrize(
    ("requested", "estimator", "planned"),
    [
        ((), LogisticRegression(), ("auc", "accuracy", "f1", "log_loss")),
        ((), LinearSVC(), ("auc", "accuracy", "f1")),
        ((), LinearRegression(), ("rmse", "mae", "r2")),
        (("f1",), LogisticRegression(), ("f1",)),
    ],
)
def test_without_a_request_every_applicable_metric_is_planned(
    requested: tuple[str, ...], estimator: Any, planned: tuple[str, ...]
) -> None:
    assert plan_metrics(requested, estimator, "t") == planned


@pytest.mark.parametrize(
    ("requested", "estimator", "says"),
    [
        (("rmse",), LogisticRegression(), "does not apply to t, a classifier"),
        (("auc",), LinearRegression(), "does not apply to t, a regressor"),
        (("log_loss",), LinearSVC(), "needs predict_proba, which LinearSVC lacks"),
    ],
)
def test_a_requested_metric_that_cannot_apply_is_rejected(
    requested: tuple[str, ...], estimator: Any, says: str
) -> None:
    with pytest.raises(JobRejected, match=re.escape(says)):
        plan_metrics(requested, estimator, "t")


def test_a_metric_the_held_out_rows_cannot_give_is_skipped_with_its_reason() -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.array([0, 1] * 5)
    model = LogisticRegression().fit(x, y)
    scores = compute_metrics(("auc", "accuracy"), model, x[:3], np.zeros(3, dtype=np.int64))
    assert set(scores.values) == {"accuracy"}
    assert scores.skipped == {"auc": "only one class in the held-out rows"}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("LogisticRegression", "must be sklearn:ClassName"),
        ("sklearn:NoSuchModel", "sklearn has no estimator 'NoSuchModel'"),
        ("xgboost:DMatrix", "xgboost has no estimator 'DMatrix'"),
        ("lightgbm:Booster", "lightgbm has no estimator 'Booster'"),
        ("os:system", "is not allowed"),
        ("sklearn.utils:Bunch", "is not an estimator class"),
        ("sklearn.base:BaseEstimator", "is not an estimator class"),
        ("xgboost.sklearn:XGBClassifier", "is not allowed"),
        ("antigravity:Fly", "is not allowed"),
        ("function:antigravity:fly", "is not marked as a trainer"),
        ("function:os:system", "is not marked as a trainer"),
        ("function:test_training_specs:unmarked_fit", "decorate it with @aimesh.training.trainer"),
        ("function:nowhere.at_all:fit", "No module named 'nowhere'"),
        ("function:test_training_specs:nothing_here", "has no attribute 'nothing_here'"),
        ("function:test_training", "must be function:module.path:name"),
        ("function:import os:fit", "must be function:module.path:name"),
    ],
)
def test_trainers_that_cannot_be_resolved_are_rejected(spec: str, says: str) -> None:
    with pytest.raises(JobRejected, match=re.escape(says)):
        resolve_trainer(spec)


@pytest.mark.parametrize(
    ("trainer", "params", "says"),
    [
        ("sklearn:KMeans", {"memory": "/tmp/cache"}, "parameter 'memory' is refused"),
        ("sklearn:AgglomerativeClustering", {"memory": "cache"}, "parameter 'memory' is refused"),
        ("xgboost:XGBClassifier", {"callbacks": "x"}, "parameter 'callbacks' is refused"),
        ("lightgbm:LGBMClassifier", {"output_model": "m.txt"}, "'output_model' is refused"),
        ("lightgbm:LGBMClassifier", {"forcedsplits_filename": "s"}, "is refused"),
        ("lightgbm:LGBMClassifier", {"input_model": "m.txt"}, "is refused"),
        ("sklearn:LogisticRegression", {"log_dir": "x"}, "'log_dir' is refused"),
        ("sklearn:LogisticRegression", {"score_fn": "x"}, "'score_fn' is refused"),
        ("sklearn:LogisticRegression", {"weights_path": "x"}, "is refused"),
        ("sklearn:LogisticRegression", {"_private": 1}, "is not a parameter name"),
        ("sklearn:LogisticRegression", {"solver": "../x"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "..\\x"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "/etc/passwd"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "%2e%2e%2f"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "%252e%252e%252f"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "file:///etc/passwd"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "C:\\x"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "~root"}, "looks like a path"),
        ("sklearn:LogisticRegression", {"solver": "os:system"}, "names code"),
        ("sklearn:LogisticRegression", {"solver": "os.system"}, "names code"),
        ("sklearn:LogisticRegression", {"solver": "x" * 201}, "longer than 200"),
        ("function:test_training_specs:marked_fit", {"data_path": "d"}, "is refused"),
    ],
)
def test_parameters_that_name_paths_or_code_are_refused(
    trainer: str, params: dict[str, Any], says: str
) -> None:
    with pytest.raises(JobRejected, match=re.escape(says)):
        resolve_trainer(trainer, params)


def test_plain_parameters_pass_and_null_is_none() -> None:
    estimator = resolve_trainer(
        "xgboost:XGBClassifier", {"objective": "binary:logistic", "max_depth": None}
    ).estimator
    assert estimator.get_params()["objective"] == "binary:logistic"
    tree = resolve_trainer(
        "sklearn:DecisionTreeClassifier", {"max_depth": None, "class_weight": "balanced"}
    ).estimator
    assert tree.get_params()["max_depth"] is None
    assert parse_params(["max_depth=none", "C=0.5"]) == {"max_depth": None, "C": 0.5}


def test_module_class_trainers_come_from_the_allow_list() -> None:
    found = resolve_trainer("sklearn.linear_model:LogisticRegression", {"C": 0.5}).estimator
    assert isinstance(found, LogisticRegression) and found.C == 0.5
    with pytest.raises(JobRejected, match="is not allowed"):
        resolve_trainer("test_training_specs:Homemade")
    homemade = resolve_trainer("test_training_specs:Homemade", allowed=["test_training_specs:*"])
    assert isinstance(homemade.estimator, Homemade)


class Homemade:
    """An estimator class of the operator's, admitted by training.allowed_trainers."""

    def fit(self, x: Any, y: Any) -> Homemade:
        return self

    def predict(self, x: Any) -> Any:
        return np.zeros(len(x))


def test_bad_parameters_of_an_estimator_class_are_rejected() -> None:
    with pytest.raises(JobRejected, match="bad parameters"):
        resolve_trainer("sklearn:LogisticRegression", {"no_such_param": 1})


def test_the_job_seed_seeds_an_estimator_unless_its_params_do() -> None:
    def random_state(spec: str, params: dict[str, Any], seed: int | None) -> object:
        estimator = resolve_trainer(spec, params, seed=seed).estimator
        return estimator.get_params()["random_state"]

    hgb = "sklearn:HistGradientBoostingClassifier"
    assert random_state(hgb, {}, 7) == 7
    assert random_state(hgb, {"random_state": 3}, 7) == 3
    assert random_state(hgb, {}, None) is None
    # An estimator without a random_state is left as it is.
    assert (
        "random_state"
        not in resolve_trainer("sklearn:KNeighborsClassifier", seed=7).estimator.get_params()
    )


def test_a_missing_booster_library_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the next `import lightgbm` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(JobRejected, match=r"pip install 'aimesh\[lightgbm\]'"):
        resolve_trainer("lightgbm:LGBMClassifier")


def test_a_marked_function_gets_the_rows_and_params_and_returns_the_fitted_model() -> None:
    resolved = resolve_trainer("function:test_training_specs:marked_fit", {"C": 0.5})
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    fitted = resolved.fit(x, np.array([0, 1] * 5))
    assert resolved.estimator is None
    assert isinstance(fitted, LogisticRegression) and fitted.C == 0.5


def test_a_function_that_declares_a_seed_is_given_the_jobs_and_others_are_not() -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.array([0, 1] * 5)

    seeded = resolve_trainer("function:test_training_specs:seeded_fit", seed=11).fit(x, y)
    unseeded = resolve_trainer("function:test_training_specs:marked_fit", seed=11).fit(x, y)

    assert seeded.get_params()["random_state"] == 11
    assert isinstance(unseeded, LogisticRegression)  # called without a seed it never declared
    with pytest.raises(JobRejected, match="seed"):  # no job seed: the function's own error
        resolve_trainer("function:test_training_specs:seeded_fit").fit(x, y)


@pytest.mark.parametrize(
    ("name", "says"),
    [("returns_unfitted", "returned an unfitted LogisticRegression"), ("returns_a_number", "int")],
)
def test_a_function_must_return_a_fitted_estimator(name: str, says: str) -> None:
    resolved = resolve_trainer(f"function:test_training_specs:{name}")
    with pytest.raises(JobRejected, match=re.escape(says)):
        resolved.fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))


def test_payloads_round_trip_and_older_test_size_payloads_still_work() -> None:
    request = TrainRequest(
        model="m",
        dataset="d@1",
        trainer="xgboost:XGBClassifier",
        target="y",
        params={"n_estimators": 5},
        split=Split.parse("column:is_test"),
        metrics=("auc",),
    )
    assert TrainRequest.from_payload(request.payload()) == request
    older = {"model": "m", "dataset": "d", "trainer": "sklearn:Ridge", "target": "y"}
    assert TrainRequest.from_payload({**older, "test_size": 0.3}).split == Split(fraction=0.3)
    with pytest.raises(JobRejected, match="unknown metric 'mape'"):
        TrainRequest.from_payload({**older, "metrics": ["mape"]})


@pytest.mark.parametrize(
    ("estimator", "framework", "suffix"),
    [
        (XGBClassifier(n_estimators=3), "xgboost", ".ubj"),
        (LGBMClassifier(n_estimators=3, verbose=-1), "lightgbm", ".txt"),
        (LogisticRegression(), "sklearn", ".skops"),
    ],
)
def test_each_model_is_saved_in_the_format_its_runtime_loads_without_trust(
    tmp_path: Path, estimator: Any, framework: str, suffix: str
) -> None:
    x = np.random.default_rng(0).normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(np.int64)
    estimator.fit(x, y)
    saved = save_model(estimator, tmp_path, "m", "t")
    assert (saved.framework, saved.path.suffix) == (framework, suffix)
    runtime = load_runtime(framework, saved.path, trusted_types=saved.trusted_types)
    out = runtime.predict({"input-0": x})
    np.testing.assert_allclose(out["probabilities"], estimator.predict_proba(x), rtol=1e-5)


def test_a_booster_trained_on_labels_it_cannot_serve_is_rejected(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(60, 3))
    y = np.where(x[:, 0] > 0, "fraud", "ok")
    estimator = LGBMClassifier(n_estimators=3, verbose=-1).fit(x, y)
    with pytest.raises(JobRejected, match=r"encode the target as 0\.\.1"):
        save_model(estimator, tmp_path, "m", "lightgbm:LGBMClassifier")


@pytest.mark.parametrize("field", ["model", "dataset", "alias"])
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_that_look_like_paths_are_rejected_before_anything_is_read(
    field: str, bad: str
) -> None:
    payload = {"model": "m", "dataset": "tx@0", "trainer": "sklearn:Ridge", "target": "y"}
    if (field, bad) == ("dataset", "x\n"):  # a reference is stripped, as the CLI's is: `x`
        assert TrainRequest.from_payload({**payload, field: bad}).dataset.strip() == "x"
        return
    with pytest.raises(JobRejected, match=r"^training payload: invalid"):
        TrainRequest.from_payload({**payload, field: bad})


@pytest.mark.parametrize("dataset", ["tx@¹", "tx@٣", "tx@-1", "tx@1.0", "tx@"])
def test_a_dataset_version_is_ascii_digits(dataset: str) -> None:
    payload = {"model": "m", "dataset": dataset, "trainer": "sklearn:Ridge", "target": "y"}
    with pytest.raises(JobRejected, match="invalid dataset reference"):
        TrainRequest.from_payload(payload)

"""Runtimes: every format predicts like its own library and refuses what it must."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm
import numpy as np
import numpy.typing as npt
import pytest
import skops.io
import xgboost
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

import aimesh.runtimes
from aimesh.errors import (
    ArtifactError,
    InvalidRequest,
    RuntimeUnavailable,
    UnsafeArtifact,
    UntrustedTypes,
)
from aimesh.protocol import Datatype, Signature, TensorSpec
from aimesh.runtimes import (
    cap_threads,
    detect_framework,
    executes_code,
    frameworks,
    inspect_artifact,
    load_runtime,
    native_thread_pools,
    thread_cap,
)

Array = npt.NDArray[Any]
N_FEATURES = 30
N_ROWS = 300


def _tabular_in(n_features: int = N_FEATURES) -> list[TensorSpec]:
    return [TensorSpec(name="input-0", datatype="FP64", shape=[-1, n_features])]


def _classifier_out(label: Datatype, n_classes: int) -> list[TensorSpec]:
    return [
        TensorSpec(name="label", datatype=label, shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP64", shape=[-1, n_classes]),
    ]


REGRESSOR_OUT = [TensorSpec(name="prediction", datatype="FP64", shape=[-1])]


@dataclass
class Case:
    """One artifact on disk and what its runtime should do with it."""

    framework: str
    path: Path
    signature: Signature
    reference: Callable[[Array], dict[str, Any]]
    """The library's own outputs for a matrix of rows."""
    trust: dict[str, Any] = field(default_factory=dict)
    batchable: bool = True
    atol: float = 1e-9

    @property
    def input_name(self) -> str:
        return self.signature.inputs[0].name


@dataclass(frozen=True)
class Data:
    x: Array
    binary: Array
    multi: Array
    regression: Array


@pytest.fixture(scope="module")
def data() -> Data:
    x, binary = make_classification(
        n_samples=N_ROWS, n_features=N_FEATURES, n_informative=10, random_state=0
    )
    _, multi = make_classification(
        n_samples=N_ROWS,
        n_features=N_FEATURES,
        n_informative=10,
        n_classes=3,
        random_state=0,
    )
    _, regression = make_regression(n_samples=N_ROWS, n_features=N_FEATURES, random_state=0)
    return Data(x, binary, multi, regression)


# Each builder trains a small model, saves it under `folder` and describes it.


def sklearn_binary(folder: Path, d: Data) -> Case:
    model = LogisticRegression(max_iter=2000).fit(d.x, d.binary)
    skops.io.dump(model, folder / "model.skops")
    return Case(
        "sklearn",
        folder / "model.skops",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("INT64", 2)),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
    )


def sklearn_multiclass_strings(folder: Path, d: Data) -> Case:
    names = np.array(["cat", "dog", "eel"], dtype=object)
    model = DecisionTreeClassifier(max_depth=5, random_state=0).fit(d.x, names[d.multi])
    skops.io.dump(model, folder / "tree.skops")
    return Case(
        "sklearn",
        folder / "tree.skops",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("BYTES", 3)),
        # skops does not trust the trees' Cython Tree type by default; aimesh does.
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
    )


def sklearn_regressor(folder: Path, d: Data) -> Case:
    model = Ridge().fit(d.x, d.regression)
    skops.io.dump(model, folder / "ridge.skops")
    return Case(
        "sklearn",
        folder / "ridge.skops",
        Signature(inputs=_tabular_in(), outputs=REGRESSOR_OUT),
        lambda x: {"prediction": model.predict(x)},
    )


def sklearn_without_probabilities(folder: Path, d: Data) -> Case:
    model = LinearSVC(random_state=0).fit(d.x, d.multi)
    skops.io.dump(model, folder / "svc.skops")
    return Case(
        "sklearn",
        folder / "svc.skops",
        Signature(
            inputs=_tabular_in(),
            outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
        ),
        lambda x: {"label": model.predict(x)},
    )


def onnx_multiclass(folder: Path, d: Data) -> Case:
    model = LogisticRegression(max_iter=2000).fit(d.x, d.multi)
    graph = to_onnx(model, d.x[:1].astype(np.float32), options={"zipmap": False})
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    return Case(
        "onnx",
        folder / "model.onnx",
        Signature(
            inputs=[TensorSpec(name="X", datatype="FP32", shape=[-1, N_FEATURES])],
            outputs=[
                TensorSpec(name="label", datatype="INT64", shape=[-1]),
                TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 3]),
            ],
        ),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
        atol=1e-5,  # the graph computes in float32
    )


def xgboost_binary(folder: Path, d: Data) -> Case:
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(d.x, d.binary)
    model.get_booster().save_model(folder / "model.json")
    return Case(
        "xgboost",
        folder / "model.json",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("INT64", 2)),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
        atol=1e-6,  # xgboost predicts in float32
    )


def xgboost_multiclass(folder: Path, d: Data) -> Case:
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(d.x, d.multi)
    model.get_booster().save_model(folder / "model.ubj")
    return Case(
        "xgboost",
        folder / "model.ubj",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("INT64", 3)),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
        atol=1e-6,
    )


def xgboost_regressor(folder: Path, d: Data) -> Case:
    model = xgboost.XGBRegressor(n_estimators=10, max_depth=3).fit(d.x, d.regression)
    model.get_booster().save_model(folder / "regressor.json")
    return Case(
        "xgboost",
        folder / "regressor.json",
        Signature(inputs=_tabular_in(), outputs=REGRESSOR_OUT),
        lambda x: {"prediction": model.predict(x)},
        atol=1e-3,  # float32 predictions on targets in the hundreds
    )


def lightgbm_binary(folder: Path, d: Data) -> Case:
    model = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(d.x, d.binary)
    model.booster_.save_model(folder / "model.txt")
    return Case(
        "lightgbm",
        folder / "model.txt",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("INT64", 2)),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
    )


def lightgbm_multiclass(folder: Path, d: Data) -> Case:
    model = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(d.x, d.multi)
    model.booster_.save_model(folder / "multi.txt")
    return Case(
        "lightgbm",
        folder / "multi.txt",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("INT64", 3)),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
    )


def lightgbm_regressor(folder: Path, d: Data) -> Case:
    model = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(d.x, d.regression)
    model.booster_.save_model(folder / "regressor.txt")
    return Case(
        "lightgbm",
        folder / "regressor.txt",
        Signature(inputs=_tabular_in(), outputs=REGRESSOR_OUT),
        lambda x: {"prediction": model.predict(x)},
    )


PYTHON_MODEL = """
import numpy as np


class Model:
    signature = {
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}],
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
    }
    batchable = True

    def load(self) -> None:
        self.weights = np.linspace(-1.0, 1.0, 30)

    def predict(self, inputs):
        return {"score": inputs["input-0"] @ self.weights}
"""


def python_model(folder: Path, d: Data) -> Case:
    (folder / "model.py").write_text(PYTHON_MODEL)
    weights = np.linspace(-1.0, 1.0, N_FEATURES)
    return Case(
        "python",
        folder / "model.py",
        Signature(
            inputs=_tabular_in(),
            outputs=[TensorSpec(name="score", datatype="FP64", shape=[-1])],
        ),
        lambda x: {"score": x @ weights},
        trust={"trusted": True},
    )


def pickled_classifier(folder: Path, d: Data) -> Case:
    model = LogisticRegression(max_iter=2000).fit(d.x, d.multi)
    joblib.dump(model, folder / "model.joblib")
    return Case(
        "pickle",
        folder / "model.joblib",
        Signature(inputs=_tabular_in(), outputs=_classifier_out("INT64", 3)),
        lambda x: {"label": model.predict(x), "probabilities": model.predict_proba(x)},
        trust={"trusted": True},
    )


BUILDERS = [
    sklearn_binary,
    sklearn_multiclass_strings,
    sklearn_regressor,
    sklearn_without_probabilities,
    onnx_multiclass,
    xgboost_binary,
    xgboost_multiclass,
    xgboost_regressor,
    lightgbm_binary,
    lightgbm_multiclass,
    lightgbm_regressor,
    python_model,
    pickled_classifier,
]


@pytest.fixture(scope="module", params=BUILDERS, ids=lambda builder: builder.__name__)
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Data
) -> Case:
    builder: Callable[[Path, Data], Case] = request.param
    return builder(tmp_path_factory.mktemp(builder.__name__), data)


# One suite over every format.


def test_predictions_match_the_library(case: Case, data: Data) -> None:
    runtime = load_runtime(case.framework, case.path, **case.trust)
    rows = data.x[:60]
    got = runtime.predict({case.input_name: rows})
    want = case.reference(rows)
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        if got[name].dtype.kind in "fc":
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=case.atol)
        else:
            np.testing.assert_array_equal(got[name], expected)


def test_signature_is_declared_by_inspect_and_load(case: Case) -> None:
    assert inspect_artifact(case.framework, case.path, **case.trust) == case.signature
    runtime = load_runtime(case.framework, case.path, **case.trust)
    assert runtime.signature == case.signature
    assert runtime.framework == case.framework
    assert runtime.batchable is case.batchable


def test_framework_is_detected_from_the_extension(case: Case) -> None:
    assert detect_framework(case.path) == case.framework


def test_artifact_stored_without_an_extension_loads(case: Case, tmp_path: Path) -> None:
    # Artifact stores name blobs by sha256, so no runtime may rely on the file's suffix.
    blob = tmp_path / "3f2a9c"
    shutil.copyfile(case.path, blob)
    assert load_runtime(case.framework, blob, **case.trust).signature == case.signature


def test_wrong_number_of_features_is_an_invalid_request(case: Case, data: Data) -> None:
    runtime = load_runtime(case.framework, case.path, **case.trust)
    with pytest.raises(InvalidRequest, match=r"shape \[5, 29\]"):
        runtime.predict({case.input_name: data.x[:5, :29]})


def test_missing_input_is_an_invalid_request(case: Case, data: Data) -> None:
    runtime = load_runtime(case.framework, case.path, **case.trust)
    with pytest.raises(InvalidRequest, match="missing input"):
        runtime.predict({"features": data.x[:5]})


def test_empty_batch_gives_empty_outputs(case: Case, data: Data) -> None:
    runtime = load_runtime(case.framework, case.path, **case.trust)
    got = runtime.predict({case.input_name: data.x[:0]})
    assert sorted(got) == sorted(spec.name for spec in case.signature.outputs)
    assert all(len(value) == 0 for value in got.values())


# The package as a whole.


def test_public_face_is_exactly_the_runtime_api() -> None:
    assert sorted(aimesh.runtimes.__all__) == [
        "Runtime",
        "apply_thread_cap",
        "cap_threads",
        "detect_framework",
        "executes_code",
        "frameworks",
        "inspect_artifact",
        "inspect_isolated",
        "load_runtime",
        "machine_cores",
        "native_thread_pools",
        "share_of_cores",
        "thread_cap",
        "widened_types",
    ]


def test_importing_runtimes_imports_no_model_library() -> None:
    libraries = ["sklearn", "skops", "xgboost", "lightgbm", "onnxruntime", "joblib"]
    code = (
        "import sys, aimesh.runtimes; "
        f"print([name for name in {libraries!r} if name in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_frameworks_and_which_run_code() -> None:
    assert frameworks() == ["sklearn", "onnx", "xgboost", "lightgbm", "python", "pickle"]
    assert [name for name in frameworks() if executes_code(name)] == ["python", "pickle"]


@pytest.mark.parametrize(
    ("filename", "framework"),
    [
        ("m.skops", "sklearn"),
        ("m.onnx", "onnx"),
        ("m.ubj", "xgboost"),
        ("m.JSON", "xgboost"),
        ("m.txt", "lightgbm"),
        ("m.py", "python"),
        ("m.pkl", "pickle"),
        ("m.pickle", "pickle"),
        ("m.joblib", "pickle"),
        ("m.bin", None),
        ("model", None),
    ],
)
def test_detect_framework_by_extension(filename: str, framework: str | None) -> None:
    assert detect_framework(Path(filename)) == framework


def test_unknown_framework_is_unavailable_and_lists_the_known_ones(tmp_path: Path) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"\x00")
    calls: list[Callable[[], object]] = [
        lambda: inspect_artifact("tensorflow", artifact),
        lambda: load_runtime("tensorflow", artifact),
        lambda: executes_code("tensorflow"),
    ]
    for call in calls:
        with pytest.raises(RuntimeUnavailable, match="sklearn, onnx, xgboost, lightgbm"):
            call()


def test_missing_optional_library_names_the_pip_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "model.json"
    artifact.write_text("{}")
    # None in sys.modules makes the next `import xgboost` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "xgboost", None)
    monkeypatch.delitem(sys.modules, "aimesh.runtimes._xgboost", raising=False)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'aimesh\[xgboost\]'"):
        load_runtime("xgboost", artifact)


@pytest.mark.parametrize(
    ("framework", "filename", "content"),
    [
        ("sklearn", "model.skops", b"not a zip archive"),
        ("onnx", "model.onnx", b"a text file pushed as onnx\n"),
        ("xgboost", "model.json", b'{"not": "a booster"}'),
        ("xgboost", "model.ubj", b"\x00\x01garbage"),
        ("lightgbm", "model.txt", b"hello\n"),
        ("python", "model.py", b"def broken(:\n"),
        ("pickle", "model.pkl", b"not a pickle"),
    ],
)
def test_corrupt_artifact_is_an_artifact_error(
    tmp_path: Path, framework: str, filename: str, content: bytes
) -> None:
    artifact = tmp_path / filename
    artifact.write_bytes(content)
    with pytest.raises(ArtifactError, match=f"{filename}"):
        inspect_artifact(framework, artifact, trusted=True)
    with pytest.raises(ArtifactError):
        load_runtime(framework, artifact, trusted=True)


def test_missing_file_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_runtime("onnx", tmp_path / "absent.onnx")


# Trust.


class _TouchOnUnpickle:
    """Unpickling it creates a file: proof of whether a pickle was ever loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _write_code_running_artifact(framework: str, folder: Path, marker: Path) -> Path:
    if framework == "pickle":
        artifact = folder / "model.pkl"
        artifact.write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    else:
        artifact = folder / "model.py"
        artifact.write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return artifact


@pytest.mark.parametrize("framework", ["python", "pickle"])
def test_code_running_formats_are_refused_without_trust_and_never_run(
    tmp_path: Path, framework: str
) -> None:
    marker = tmp_path / "ran"
    artifact = _write_code_running_artifact(framework, tmp_path, marker)
    with pytest.raises(UnsafeArtifact, match="without explicit trust"):
        inspect_artifact(framework, artifact)
    with pytest.raises(UnsafeArtifact):
        load_runtime(framework, artifact)
    assert not marker.exists()
    # With trust the code does run; this file then fails as a model, which is expected.
    with pytest.raises(ArtifactError):
        load_runtime(framework, artifact, trusted=True)
    assert marker.exists()


def double(x: Array) -> Array:
    """A function skops does not trust by default, being in a test module."""
    return x * 2.0


def test_skops_with_an_untrusted_type_is_refused_until_that_type_is_trusted(
    tmp_path: Path, data: Data
) -> None:
    model = make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=2000))
    model.fit(data.x, data.binary)
    artifact = tmp_path / "pipeline.skops"
    skops.io.dump(model, artifact)
    untrusted = f"{double.__module__}.double"

    with pytest.raises(UntrustedTypes) as refused:
        inspect_artifact("sklearn", artifact)
    assert refused.value.types == [untrusted]
    with pytest.raises(UntrustedTypes):
        load_runtime("sklearn", artifact, trusted_types=["numpy.float64"])

    runtime = load_runtime("sklearn", artifact, trusted_types=[untrusted])
    got = runtime.predict({"input-0": data.x[:20]})
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(data.x[:20]))
    np.testing.assert_array_equal(got["label"], model.predict(data.x[:20]))


# Format-specific behaviour.


def test_onnx_zipmap_output_is_left_out_and_logged(
    tmp_path: Path, data: Data, caplog: pytest.LogCaptureFixture
) -> None:
    model = LogisticRegression(max_iter=2000).fit(data.x, data.binary)
    artifact = tmp_path / "zipmap.onnx"
    artifact.write_bytes(to_onnx(model, data.x[:1].astype(np.float32)).SerializeToString())
    with caplog.at_level(logging.WARNING, logger="aimesh.runtimes"):
        runtime = load_runtime("onnx", artifact)
    assert "zipmap" in caplog.text
    assert [spec.name for spec in runtime.signature.outputs] == ["output_label"]
    got = runtime.predict({"X": data.x[:20]})
    assert list(got) == ["output_label"]
    np.testing.assert_array_equal(got["output_label"], model.predict(data.x[:20]))


def test_xgboost_softmax_objective_gives_labels_only(tmp_path: Path, data: Data) -> None:
    params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 3}
    booster = xgboost.train(params, xgboost.DMatrix(data.x, label=data.multi), 5)
    artifact = tmp_path / "softmax.ubj"
    booster.save_model(artifact)
    runtime = load_runtime("xgboost", artifact)
    assert runtime.signature.outputs == [TensorSpec(name="label", datatype="INT64", shape=[-1])]
    got = runtime.predict({"input-0": data.x[:20]})
    expected = booster.predict(xgboost.DMatrix(data.x[:20])).astype(np.int64)
    np.testing.assert_array_equal(got["label"], expected)


def test_xgboost_stops_at_the_best_round_like_xgbclassifier(tmp_path: Path, data: Data) -> None:
    # A raw Booster predicts with every round; XGBClassifier stops at early stopping's best.
    model = xgboost.XGBClassifier(n_estimators=50, learning_rate=0.5, early_stopping_rounds=2)
    model.fit(
        data.x[:200], data.binary[:200], eval_set=[(data.x[200:], data.binary[200:])], verbose=False
    )
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    artifact = tmp_path / "early.json"
    model.get_booster().save_model(artifact)
    got = load_runtime("xgboost", artifact).predict({"input-0": data.x})
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(data.x), atol=1e-6)


def test_python_model_returning_an_array_gives_output_0(tmp_path: Path) -> None:
    artifact = tmp_path / "identity.py"
    artifact.write_text(
        "class Model:\n"
        "    def load(self):\n"
        "        pass\n"
        "    def predict(self, inputs):\n"
        "        return inputs['text']\n"
    )
    runtime = load_runtime("python", artifact, trusted=True)
    # Without a declared signature, inputs pass through unchecked and rows are not batched.
    assert runtime.signature == Signature()
    assert runtime.batchable is False
    words = np.array(["a", "b"], dtype=object)
    np.testing.assert_array_equal(runtime.predict({"text": words})["output-0"], words)


def test_python_model_without_a_model_class_is_an_artifact_error(tmp_path: Path) -> None:
    artifact = tmp_path / "empty.py"
    artifact.write_text("x = 1\n")
    with pytest.raises(ArtifactError, match="defines no class Model"):
        inspect_artifact("python", artifact, trusted=True)


# Inputs.


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Case:
    return sklearn_binary(tmp_path_factory.mktemp("classifier"), data)


def test_integer_input_is_converted_to_fp64(classifier: Case, data: Data) -> None:
    runtime = load_runtime(classifier.framework, classifier.path)
    rows = np.round(data.x[:10]).astype(np.int64)
    got = runtime.predict({"input-0": rows})
    np.testing.assert_array_equal(got["label"], classifier.reference(rows.astype(float))["label"])


def test_text_input_to_a_numeric_model_is_an_invalid_request(classifier: Case, data: Data) -> None:
    runtime = load_runtime(classifier.framework, classifier.path)
    with pytest.raises(InvalidRequest, match="does not convert to FP64"):
        runtime.predict({"input-0": data.x[:3].astype(str)})


def test_nan_refused_by_the_model_is_an_invalid_request(classifier: Case, data: Data) -> None:
    runtime = load_runtime(classifier.framework, classifier.path)
    rows = data.x[:3].copy()
    rows[0, 0] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        runtime.predict({"input-0": rows})


@settings(max_examples=40, deadline=None)
@given(
    rows=arrays(
        np.float64, st.tuples(st.integers(1, 8), st.just(N_FEATURES)), elements=st.floats(-1e3, 1e3)
    )
)
def test_labels_are_the_most_probable_class(classifier: Case, rows: Array) -> None:
    runtime = load_runtime(classifier.framework, classifier.path)
    got = runtime.predict({"input-0": rows})
    want = classifier.reference(rows)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0)


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's models capped at one native thread, as a model service caps them."""
    from threadpoolctl import threadpool_limits

    from aimesh.runtimes import _threads

    with threadpool_limits(limits=None):  # restores every pool's size on the way out
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.setattr(_threads, "_cap", None)
        cap_threads(1)
        yield


def test_predictions_are_the_same_under_a_thread_cap(
    case: Case, data: Data, one_thread: None
) -> None:
    runtime = load_runtime(case.framework, case.path, **case.trust)
    rows = data.x[:60]
    got = runtime.predict({case.input_name: rows})
    for name, expected in case.reference(rows).items():
        if got[name].dtype.kind in "fc":
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=case.atol)
        else:
            np.testing.assert_array_equal(got[name], expected)
    assert thread_cap() == 1
    assert set(native_thread_pools().values()) <= {1}

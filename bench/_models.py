"""The benchmark's models and requests: the demo fraud model, trained two ways, in a home.

Each model kind gets its own aimesh home (its registry holds ``fraud`` version 1 with alias
``champion``) and the same skops file is what the baselines load, so that every server
answers with the same estimator. The request is one real row of the demo data set, encoded
once per protocol, plus the probabilities the estimator gives for it, to check answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import skops.io

MODEL_NAME = "fraud"
ALIAS = "champion"
INPUT = "input-0"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"

KINDS: dict[str, str] = {
    "lr": "LogisticRegression",
    "hgb": "HistGradientBoostingClassifier",
}
"""Model kinds by short name: the demo's scaled logistic regression, and boosted trees."""


@dataclass(frozen=True, slots=True)
class BenchModel:
    """One trained model, pushed to its own home, with the request every server is sent."""

    kind: str
    home: Path
    artifact: Path
    json_body: bytes
    grpc_body: bytes
    expected: np.ndarray

    @property
    def title(self) -> str:
        """The estimator's class name."""
        return KINDS[self.kind]


def _train(kind: str, x: np.ndarray, y: np.ndarray) -> Any:
    if kind == "lr":
        from aimesh.examples.fraud import train_fraud_model

        model, _ = train_fraud_model(x, y)
        return model
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=0).fit(x, y)


def load_estimator(path: Path) -> Any:
    """Load a skops file the way a user would: trusting the types it lists."""
    return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))


def prepare(kind: str, folder: Path) -> BenchModel:
    """Train ``kind``, save it with skops, push it as ``fraud@champion`` to a fresh home."""
    from aimesh.config import Settings
    from aimesh.examples import make_fraud_dataset
    from aimesh.protocol import InferenceRequest, Tensor
    from aimesh.protocol.grpc import request_to_pb
    from aimesh.registry import LocalRegistry, push_model

    x, y = make_fraud_dataset()
    estimator = _train(kind, x, y)
    home = folder / f"home-{kind}"
    artifact = folder / f"fraud-{kind}.skops"
    skops.io.dump(estimator, artifact)
    registry = LocalRegistry.from_settings(Settings(home=home))
    try:
        push_model(registry, MODEL_NAME, artifact, aliases=[ALIAS])
    finally:
        registry.close()

    row = x[:1]
    request = {"inputs": [{"name": INPUT, "shape": [1, 30], "datatype": "FP64", "data": row[0]}]}
    pb = request_to_pb(
        InferenceRequest(inputs=[Tensor(name=INPUT, datatype="FP64", data=row)]),
        model_name=MODEL_NAME,
    )
    return BenchModel(
        kind=kind,
        home=home,
        artifact=artifact,
        json_body=msgspec.json.encode(request, enc_hook=_numpy_hook),
        grpc_body=pb.SerializeToString(),
        expected=np.asarray(load_estimator(artifact).predict_proba(row), dtype=np.float64),
    )


def _numpy_hook(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise NotImplementedError(type(value).__name__)

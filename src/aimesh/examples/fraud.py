"""A synthetic fraud data set (30 numeric features, about 3% positives) and its model."""

from __future__ import annotations

from typing import Any

import numpy as np

FRAUD_FEATURES = 30
FRAUD_SEED = 7


def make_fraud_dataset(
    n_rows: int = 20_000, *, seed: int = FRAUD_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``x`` (n_rows x 30, float64) and labels ``y`` (0/1, imbalanced), reproducibly."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_rows,
        n_features=FRAUD_FEATURES,
        n_informative=12,
        n_redundant=6,
        weights=[0.97],
        flip_y=0.005,
        class_sep=1.2,
        random_state=seed,
    )
    return x.astype(np.float64), y.astype(np.int64)


def train_fraud_model(
    x: np.ndarray, y: np.ndarray, *, seed: int = FRAUD_SEED
) -> tuple[Any, dict[str, float]]:
    """A scaled logistic regression trained on 80% of the rows; its metrics on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x_train, y_train)
    scores = model.predict_proba(x_test)[:, 1]
    predicted = model.predict(x_test)
    metrics = {
        "auc": float(roc_auc_score(y_test, scores)),
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1": float(f1_score(y_test, predicted)),
    }
    return model, metrics

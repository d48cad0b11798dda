"""The demo the README and ``make run`` walk through: a synthetic fraud-detection model."""

from aimesh.examples.fraud import (
    FRAUD_FEATURES,
    FRAUD_SEED,
    make_fraud_dataset,
    train_fraud_model,
)

__all__ = ["FRAUD_FEATURES", "FRAUD_SEED", "make_fraud_dataset", "train_fraud_model"]

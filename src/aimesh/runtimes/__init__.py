"""Model runtimes: load an artifact file by framework name and predict on numpy arrays.

Frameworks: sklearn (skops), onnx, xgboost, lightgbm, python and pickle; the last two run
the artifact's code and so need explicit trust. Each framework's library is imported only
when one of its artifacts is inspected or loaded.
"""

from aimesh.runtimes._frameworks import (
    detect_framework,
    executes_code,
    frameworks,
    inspect_artifact,
    load_runtime,
)
from aimesh.runtimes.base import Runtime

__all__ = [
    "Runtime",
    "detect_framework",
    "executes_code",
    "frameworks",
    "inspect_artifact",
    "load_runtime",
]

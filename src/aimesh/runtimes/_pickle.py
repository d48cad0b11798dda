"""Any estimator saved with pickle or joblib; unpickling runs code, so it needs trust."""

from __future__ import annotations

from pathlib import Path

import joblib

from aimesh.protocol import Signature
from aimesh.runtimes._estimator import estimator_runtime
from aimesh.runtimes._tabular import TabularRuntime
from aimesh.runtimes.base import Trust, require_trust, unreadable

FRAMEWORK = "pickle"


def inspect(path: Path, trust: Trust) -> Signature:
    """The signature of a trusted pickle (it must be unpickled to be known)."""
    return load(path, trust).signature


def load(path: Path, trust: Trust) -> TabularRuntime:
    """Unpickle a trusted estimator."""
    # Checked here, beside the unpickling, so no caller can reach it without trust.
    require_trust(FRAMEWORK, path, trust)
    try:
        # joblib.load reads plain pickles too.
        estimator = joblib.load(path)
    # Unpickling runs arbitrary reducers: any exception means the file is unusable here.
    except Exception as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    return estimator_runtime(FRAMEWORK, path, estimator)

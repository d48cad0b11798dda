"""scikit-learn estimators saved with skops (``.skops``), loaded without running code.

skops lists the types a file would instantiate; anything outside its defaults must be on
the caller's trusted list, or the file is refused before a single object is built.
"""

from __future__ import annotations

from pathlib import Path

import skops.io

from aimesh.errors import UntrustedTypes
from aimesh.protocol import Signature
from aimesh.runtimes._estimator import estimator_runtime
from aimesh.runtimes._tabular import TabularRuntime
from aimesh.runtimes.base import SKLEARN_OWN_TYPES, Trust, unreadable

FRAMEWORK = "sklearn"


def inspect(path: Path, trust: Trust) -> Signature:
    """The signature of a skops file whose types are all trusted."""
    return load(path, trust).signature


def load(path: Path, trust: Trust) -> TabularRuntime:
    """Load a skops file whose types are all trusted."""
    needed = _checked_types(path, trust)
    try:
        estimator = skops.io.load(path, trusted=needed)
    # A corrupt archive can fail anywhere inside skops (zip, JSON, schema, numpy).
    except Exception as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    return estimator_runtime(FRAMEWORK, path, estimator)


def _checked_types(path: Path, trust: Trust) -> list[str]:
    """The non-default types in the file, all of which the caller trusts."""
    try:
        found: list[str] = skops.io.get_untrusted_types(file=path)
    except Exception as exc:
        raise unreadable(FRAMEWORK, path, exc) from exc
    untrusted = sorted(set(found) - trust.types - SKLEARN_OWN_TYPES)
    if untrusted:
        raise UntrustedTypes(untrusted)
    return sorted(found)

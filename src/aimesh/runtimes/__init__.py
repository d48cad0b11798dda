"""Model runtimes: load an artifact file by framework name and predict on numpy arrays.

Frameworks: sklearn (skops), onnx, xgboost, lightgbm, python and pickle; the last two run
the artifact's code and so need explicit trust, and a registry inspects them only in a
process of their own (:func:`inspect_isolated`). Each framework's library is imported only
when one of its artifacts is inspected or loaded. A process that runs models caps their
native thread pools first (:func:`cap_threads`); every load applies the cap again.
"""

from aimesh.runtimes._frameworks import (
    detect_framework,
    executes_code,
    frameworks,
    inspect_artifact,
    load_runtime,
    widened_types,
)
from aimesh.runtimes._isolated import inspect_isolated
from aimesh.runtimes._threads import (
    apply_thread_cap,
    cap_threads,
    machine_cores,
    native_thread_pools,
    share_of_cores,
    thread_cap,
)
from aimesh.runtimes.base import Runtime

__all__ = [
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

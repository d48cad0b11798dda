"""How many native threads a model may use in this process: one cap for every library.

OpenMP (scikit-learn's tree ensembles, LightGBM, XGBoost) and BLAS start one thread per
core and spin while they wait. Two model processes on two cores then spend most of their
time fighting each other (measured: a quarter of the throughput). A process that runs
models caps them to its share of the machine once, with :func:`cap_threads`, before it
loads a model; every later load applies the cap again (a library loaded by the model is
capped before its first predict), and the runtimes that keep their own thread settings
(onnxruntime sessions, XGBoost and LightGBM boosters) read :func:`thread_cap`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("aimesh.runtimes")

# Read by the libraries when they initialise: those loaded after the cap start capped.
_ENVIRONMENT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_cap: int | None = None


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def share_of_cores(processes: int) -> int:
    """The threads each of ``processes`` model processes gets: the cores divided, at least 1."""
    return max(1, machine_cores() // max(1, processes))


def cap_threads(threads: int) -> int:
    """Cap every native thread pool of this process at ``threads``; returns the cap."""
    global _cap
    if threads < 1:
        raise ValueError(f"a thread cap must be at least 1, got {threads}")
    _cap = threads
    for name in _ENVIRONMENT:
        os.environ[name] = str(threads)
    apply_thread_cap()
    return threads


def thread_cap() -> int | None:
    """The cap set by :func:`cap_threads` in this process, if any."""
    return _cap


def apply_thread_cap() -> None:
    """Apply the cap to the thread pools loaded since it was set (after loading a model)."""
    if _cap is None:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=_cap)


def native_thread_pools() -> dict[str, int]:
    """The threads each loaded native pool will use, by API (``openmp``, ``blas``)."""
    from threadpoolctl import threadpool_info

    pools: dict[str, int] = {}
    for pool in threadpool_info():
        api = str(pool.get("user_api", "unknown"))
        threads: Any = pool.get("num_threads", 0)
        pools[api] = max(pools.get(api, 0), int(threads))
    return pools

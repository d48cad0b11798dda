"""Model as a Service: one model version served over OIP v2 REST and gRPC, batched, hot-swapped.

The core (:class:`DataPlane`, :class:`ModelHost`, :class:`ServedModel`, :class:`Batcher`)
has no HTTP or gRPC in it; ``rest.py`` and ``grpc.py`` adapt it; ``server.py`` runs a
worker and ``workers.py`` runs several.
"""

from aimesh.serving.batching import Batcher, BatchStats, merge, split
from aimesh.serving.dataplane import DataPlane
from aimesh.serving.host import ModelHost, ModelRef
from aimesh.serving.model import BatchingOptions, ServedModel
from aimesh.serving.server import WorkerPlan, run_worker
from aimesh.serving.workers import serve

__all__ = [
    "BatchStats",
    "Batcher",
    "BatchingOptions",
    "DataPlane",
    "ModelHost",
    "ModelRef",
    "ServedModel",
    "WorkerPlan",
    "merge",
    "run_worker",
    "serve",
    "split",
]

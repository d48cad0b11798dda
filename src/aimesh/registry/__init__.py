"""The model registry: models, immutable versions, aliases, metrics, lineage, artifacts.

Use :func:`open_registry` to get a :class:`Registry`: the local store, or a registry
service over HTTP when ``registry.url`` is configured. Both behave the same.
"""

from aimesh.registry.artifacts import ArtifactStore, sha256_file
from aimesh.registry.interface import Registry, open_registry
from aimesh.registry.push import push_model
from aimesh.registry.service import LocalRegistry
from aimesh.registry.store import RegistryStore
from aimesh.registry.types import (
    LATEST,
    Alias,
    ArtifactInfo,
    CollectedFile,
    GarbageReport,
    HistoryEntry,
    Lineage,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    VersionCreate,
    check_model_name,
)

__all__ = [
    "LATEST",
    "Alias",
    "ArtifactInfo",
    "ArtifactStore",
    "CollectedFile",
    "GarbageReport",
    "HistoryEntry",
    "Lineage",
    "LocalRegistry",
    "ModelCreate",
    "ModelInfo",
    "ModelUpdate",
    "ModelVersion",
    "Registry",
    "RegistryStore",
    "VersionCreate",
    "check_model_name",
    "open_registry",
    "push_model",
    "sha256_file",
]

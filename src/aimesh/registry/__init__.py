"""The model registry: models, immutable versions, aliases, metrics, lineage, artifacts,
and records of every registered kind (traffic policies, pipelines...: :mod:`.kinds`).

Use :func:`open_registry` to get a :class:`Registry`: the local store, or a registry
service over HTTP when ``registry.url`` is configured. Both behave the same.
"""

from aimesh.registry.artifacts import ArtifactStore, sha256_file
from aimesh.registry.interface import Registry, open_registry, registry_key, service_credential
from aimesh.registry.keys import KeyWatch, static_keys
from aimesh.registry.kinds import (
    Record,
    RecordKind,
    RecordRevision,
    RecordWrite,
    RegistryState,
    record_kind,
    record_kinds,
    register_kind,
    unregister_kind,
)
from aimesh.registry.push import push_model
from aimesh.registry.rollouts import ROLLOUTS
from aimesh.registry.service import LocalRegistry
from aimesh.registry.store import RegistryStore
from aimesh.registry.types import (
    LATEST,
    Alias,
    ArtifactInfo,
    CollectedFile,
    GarbageReport,
    HistoryEntry,
    KeyCreate,
    KeyDigest,
    KeyInfo,
    Lineage,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    NewKey,
    VersionCreate,
    check_alias_name,
    check_model_name,
)

__all__ = [
    "LATEST",
    "ROLLOUTS",
    "Alias",
    "ArtifactInfo",
    "ArtifactStore",
    "CollectedFile",
    "GarbageReport",
    "HistoryEntry",
    "KeyCreate",
    "KeyDigest",
    "KeyInfo",
    "KeyWatch",
    "Lineage",
    "LocalRegistry",
    "ModelCreate",
    "ModelInfo",
    "ModelUpdate",
    "ModelVersion",
    "NewKey",
    "Record",
    "RecordKind",
    "RecordRevision",
    "RecordWrite",
    "Registry",
    "RegistryState",
    "RegistryStore",
    "VersionCreate",
    "check_alias_name",
    "check_model_name",
    "open_registry",
    "push_model",
    "record_kind",
    "record_kinds",
    "register_kind",
    "registry_key",
    "service_credential",
    "sha256_file",
    "static_keys",
    "unregister_kind",
]

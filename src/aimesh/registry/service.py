"""The registry's core: the store, the artifacts and the runtimes' safety checks together.

Plain Python, no web framework: the REST adapter (``api.py``) and the CLI in local mode
both call :class:`LocalRegistry`; the HTTP client (``client.py``) offers the same methods.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from aimesh import runtimes
from aimesh.auth import KeyEntry, check_key_name, hash_key, new_key
from aimesh.config import Settings
from aimesh.errors import ArtifactNotFound
from aimesh.registry.artifacts import ArtifactStore
from aimesh.registry.store import RegistryStore
from aimesh.registry.types import (
    Alias,
    ArtifactInfo,
    HistoryEntry,
    KeyCreate,
    KeyInfo,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    NewKey,
    VersionCreate,
)


def default_actor() -> str:
    """Who is making changes from this process: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class LocalRegistry:
    """The registry working directly on its database and artifact store."""

    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        *,
        max_artifact_bytes: int,
        actor: str | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.max_artifact_bytes = max_artifact_bytes
        self.actor = actor or default_actor()
        self.on_change = on_change

    @classmethod
    def from_settings(cls, settings: Settings, *, actor: str | None = None) -> LocalRegistry:
        """Open the registry the settings describe, migrating its database if needed."""
        return cls(
            RegistryStore.open(settings.registry_database_url),
            ArtifactStore(
                settings.artifacts_url,
                cache_dir=settings.cache_dir,
                storage_options=settings.registry.storage_options,
            ),
            max_artifact_bytes=settings.registry.max_artifact_bytes,
            actor=actor,
        )

    def close(self) -> None:
        """Release the database connections."""
        self.store.close()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- models ---------------------------------------------------------------------------

    def create_model(self, spec: ModelCreate, *, actor: str | None = None) -> ModelInfo:
        """Create a model."""
        info = self.store.create_model(spec, actor or self.actor)
        self._changed()
        return info

    def update_model(
        self, name: str, change: ModelUpdate, *, actor: str | None = None
    ) -> ModelInfo:
        """Change a model's description or tags."""
        info = self.store.update_model(name, change, actor or self.actor)
        self._changed()
        return info

    def list_models(self) -> list[ModelInfo]:
        """Every model."""
        return self.store.list_models()

    def get_model(self, name: str) -> ModelInfo:
        """One model."""
        return self.store.get_model(name)

    # -- artifacts ------------------------------------------------------------------------

    def upload_artifact(self, path: Path) -> ArtifactInfo:
        """Store a local file in the artifact store."""
        return self.artifacts.put_file(path, max_bytes=self.max_artifact_bytes)

    def upload_chunks(
        self, chunks: Iterable[bytes], *, expected_sha256: str | None = None
    ) -> ArtifactInfo:
        """Store a stream of bytes, refusing it if it does not hash to ``expected_sha256``."""
        return self.artifacts.put(
            chunks, max_bytes=self.max_artifact_bytes, expected_sha256=expected_sha256
        )

    def fetch_artifact(self, version: ModelVersion) -> Path:
        """A local, just-verified copy of a version's artifact."""
        return self.artifacts.fetch(version.artifact_sha256)

    def download_artifact(self, name: str, ref: str | int, dest: Path) -> ModelVersion:
        """Write a version's verified artifact to ``dest``."""
        version = self.get_version(name, ref)
        self.artifacts.copy_to(version.artifact_sha256, dest)
        return version

    # -- versions -------------------------------------------------------------------------

    def create_version(
        self, name: str, spec: VersionCreate, *, actor: str | None = None
    ) -> ModelVersion:
        """Register an uploaded artifact as the next version of a model.

        The artifact is checked by its runtime first: a format that runs code needs
        ``trusted``, a skops file may hold only trusted types, and an unreadable file is
        refused. The signature is read from the artifact unless the spec gives one.
        """
        self.store.get_model(name)  # unknown model: fail before touching the artifact
        if not self.artifacts.exists(spec.artifact_sha256):
            raise ArtifactNotFound(
                f"no artifact with sha256 {spec.artifact_sha256}: upload it first",
                sha256=spec.artifact_sha256,
            )
        path = self.artifacts.fetch(spec.artifact_sha256)
        inspected = runtimes.inspect_artifact(
            spec.framework, path, trusted=spec.trusted, trusted_types=spec.trusted_types
        )
        version = self.store.create_version(
            name,
            spec,
            size=path.stat().st_size,
            signature=spec.signature or inspected,
            actor=actor or self.actor,
        )
        self._changed()
        return version

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first."""
        return self.store.list_versions(name)

    def get_version(self, name: str, ref: str | int) -> ModelVersion:
        """A version by number, alias or ``latest``."""
        return self.store.get_version(name, ref)

    def archive_version(self, name: str, number: int, *, actor: str | None = None) -> ModelVersion:
        """Archive a version that no alias points at."""
        version = self.store.archive_version(name, number, actor or self.actor)
        self._changed()
        return version

    def log_metrics(self, name: str, number: int, metrics: dict[str, float]) -> ModelVersion:
        """Add new metrics to a version."""
        return self.store.log_metrics(name, number, metrics)

    # -- aliases and history ----------------------------------------------------------------

    def set_alias(self, name: str, alias: str, number: int, *, actor: str | None = None) -> Alias:
        """Point an alias at a version."""
        moved = self.store.set_alias(name, alias, number, actor or self.actor)
        self._changed()
        return moved

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        """Remove an alias."""
        self.store.delete_alias(name, alias, actor or self.actor)
        self._changed()

    def list_aliases(self, name: str) -> list[Alias]:
        """A model's aliases."""
        return self.store.list_aliases(name)

    def history(self, name: str, *, limit: int = 100) -> list[HistoryEntry]:
        """The newest changes to a model."""
        return self.store.history(name, limit=limit)

    # -- API keys ---------------------------------------------------------------------------

    def create_key(self, spec: KeyCreate, *, actor: str | None = None) -> NewKey:
        """Make a random key with ``spec``'s name and scopes; only its digest is stored."""
        check_key_name(spec.name)
        key = new_key()
        info = self.store.create_key(spec.name, hash_key(key), spec.scopes, actor or self.actor)
        self._changed()
        return NewKey(key=key, info=info)

    def list_keys(self) -> list[KeyInfo]:
        """Every key, active first (never a key or its digest)."""
        return self.store.list_keys()

    def revoke_key(self, name: str, *, actor: str | None = None) -> KeyInfo:
        """Revoke the active key named ``name``: services refuse it once they hear of it."""
        info = self.store.revoke_key(check_key_name(name), actor or self.actor)
        self._changed()
        return info

    def key_entries(self) -> list[KeyEntry]:
        """The active keys with their digests, as services check requests against them."""
        return self.store.key_entries()

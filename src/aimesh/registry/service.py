"""The registry's core: the store, the artifacts and the runtimes' safety checks together.

Plain Python, no web framework: the REST adapter (``api.py``) and the CLI in local mode
both call :class:`LocalRegistry`; the HTTP client (``client.py``) offers the same methods.

Trust is the operator's decision: a version that runs code when loaded (pickle, joblib,
Python) or widens skops' types is accepted only when ``registry.allow_code_artifacts`` is
on and the caller holds the admin scope, and such an artifact is inspected in a process of
its own, never in this one. A refused version leaves nothing behind: no model, no blob.
"""

from __future__ import annotations

import getpass
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aimesh import runtimes
from aimesh.auth import LOCAL_OPERATOR, Identity, KeyEntry, check_key_name, hash_key, new_key
from aimesh.config import Settings
from aimesh.errors import AimeshError, ArtifactNotFound, TrustDisabled, UnsafeArtifact
from aimesh.protocol import Signature
from aimesh.registry.artifacts import ArtifactStore
from aimesh.registry.kinds import Expect, Record, RecordKind, RecordRevision, S
from aimesh.registry.store import RegistryStore
from aimesh.registry.types import (
    Alias,
    ArtifactInfo,
    CollectedFile,
    GarbageReport,
    HistoryEntry,
    KeyCreate,
    KeyInfo,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    NewKey,
    VersionCreate,
    check_model_name,
)

log = logging.getLogger("aimesh.registry")

CODE_FORMATS = "pickle, joblib, python"


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
        allow_code_artifacts: bool = False,
        inspect_timeout_s: float = 120.0,
        gc_grace_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.max_artifact_bytes = max_artifact_bytes
        self.actor = actor or default_actor()
        self.on_change = on_change
        self.allow_code_artifacts = allow_code_artifacts
        self.inspect_timeout_s = inspect_timeout_s
        self.gc_grace_s = gc_grace_s
        # Held while a blob is judged unused and removed, and while a version that uses a
        # blob is committed: this process never removes a blob a version is being made of.
        self._blobs = threading.Lock()

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
            allow_code_artifacts=settings.registry.allow_code_artifacts,
            inspect_timeout_s=settings.registry.inspect_timeout_s,
            gc_grace_s=settings.registry.gc_grace_s,
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
        self,
        name: str,
        spec: VersionCreate,
        *,
        actor: str | None = None,
        caller: Identity = LOCAL_OPERATOR,
    ) -> ModelVersion:
        """Register an uploaded artifact as the next version of a model.

        First the trust decision, before the artifact is read: a format that runs code, or
        skops types beyond the safe ones, needs the registry's policy
        (:class:`TrustDisabled` otherwise) and an admin ``caller``
        (:class:`~aimesh.errors.Forbidden` otherwise). Then the artifact is checked by its
        runtime (a code-running one in a separate process) and its signature read unless
        the spec gives one. A refused version leaves no model and removes its blob when no
        other version uses it.
        """
        try:
            trusted_by = self._decide_trust(spec, caller, actor or self.actor)
            if not spec.create_model:
                self.store.get_model(name)  # unknown model: fail before touching the artifact
            else:
                check_model_name(name)
            if not self.artifacts.exists(spec.artifact_sha256):
                raise ArtifactNotFound(
                    f"no artifact with sha256 {spec.artifact_sha256}: upload it first",
                    sha256=spec.artifact_sha256,
                )
            path = self.artifacts.fetch(spec.artifact_sha256)
            inspected = self._inspect(spec, path)
            with self._blobs:
                # Checked again under the lock: a refused push may have removed the blob.
                if not self.artifacts.exists(spec.artifact_sha256):
                    raise ArtifactNotFound(
                        f"no artifact with sha256 {spec.artifact_sha256}: upload it again",
                        sha256=spec.artifact_sha256,
                    )
                version = self.store.create_version(
                    name,
                    spec,
                    size=path.stat().st_size,
                    signature=spec.signature or inspected,
                    actor=actor or self.actor,
                    trusted_by=trusted_by,
                )
        except AimeshError:
            self._discard_unused(spec.artifact_sha256)
            raise
        self._changed()
        return version

    def _decide_trust(self, spec: VersionCreate, caller: Identity, actor: str) -> str | None:
        """Who trusts this version (None: it needs no trust), or refuse it."""
        code = runtimes.executes_code(spec.framework)
        widened = runtimes.widened_types(spec.trusted_types)
        if not (code or spec.trusted or widened):
            return None
        if not self.allow_code_artifacts:
            raise TrustDisabled(
                "this registry does not accept artifacts that run code when loaded "
                f"({CODE_FORMATS}) or extra skops types; its operator can allow them with "
                "registry.allow_code_artifacts: true (pushes then need the admin scope)",
                framework=spec.framework,
            )
        if code and not spec.trusted:
            raise UnsafeArtifact(
                f"the {spec.framework} format runs code from the artifact when it loads; "
                "refusing it without explicit trust (--trust; trust only artifacts from a "
                "known source)",
                framework=spec.framework,
            )
        caller.require("admin")
        # The operator at this machine is a person: name them as the actor does.
        return actor if caller.kind == "operator" else caller.name

    def _inspect(self, spec: VersionCreate, path: Path) -> Signature:
        if runtimes.executes_code(spec.framework):
            return runtimes.inspect_isolated(
                spec.framework,
                path,
                trusted_types=spec.trusted_types,
                timeout_s=self.inspect_timeout_s,
            )
        return runtimes.inspect_artifact(
            spec.framework, path, trusted=spec.trusted, trusted_types=spec.trusted_types
        )

    def _discard_unused(self, sha256: str) -> None:
        """Remove a refused version's blob, unless a version uses it."""
        with self._blobs:
            try:
                if not self.store.is_artifact_referenced(sha256):
                    self.artifacts.delete(sha256)
            # Cleanup must never hide the refusal; garbage collection takes it later.
            except (AimeshError, OSError) as exc:
                log.warning("could not remove refused artifact %s: %s", sha256[:12], exc)

    # -- garbage ----------------------------------------------------------------------------

    def collect_garbage(
        self,
        *,
        dry_run: bool = False,
        grace_s: float | None = None,
        caller: Identity = LOCAL_OPERATOR,
    ) -> GarbageReport:
        """Remove blobs no version uses and abandoned staging files, both older than the
        grace period (``registry.gc_grace_s``); with ``dry_run``, only list them."""
        caller.require("admin")
        grace = self.gc_grace_s if grace_s is None else grace_s
        removed: list[CollectedFile] = []
        kept_referenced = kept_young = 0
        with self._blobs:
            referenced = self.store.referenced_artifacts()
            for found in self.artifacts.stored_files():
                if found.sha256 is not None and found.sha256 in referenced:
                    kept_referenced += 1
                    continue
                if found.age_s < grace:
                    kept_young += 1
                    continue
                kind = "artifact" if found.sha256 is not None else "staging"
                name = found.sha256 or found.path.replace("\\", "/").rsplit("/", 1)[-1]
                removed.append(
                    CollectedFile(kind=kind, name=name, size=found.size, age_s=found.age_s)
                )
                if not dry_run:
                    self.artifacts.remove_file(found.path)
        report = GarbageReport(
            dry_run=dry_run,
            removed=removed,
            bytes_freed=sum(f.size for f in removed),
            kept_referenced=kept_referenced,
            kept_young=kept_young,
        )
        return report

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

    def rollback_alias(
        self,
        name: str,
        alias: str,
        *,
        from_version: int | None = None,
        actor: str | None = None,
    ) -> Alias:
        """Point an alias back at the version it held before (see the store's method)."""
        moved = self.store.rollback_alias(
            name, alias, actor or self.actor, from_version=from_version
        )
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

    # -- records of every kind (aimesh.registry.kinds) ---------------------------------------

    def write_record(
        self,
        kind: RecordKind[S],
        name: str,
        spec: S,
        *,
        expect: Expect,
        actor: str | None = None,
    ) -> tuple[Record[S], bool]:
        """Create or replace a record as ``expect`` allows; the record, and if it was created."""
        written = self.store.write_record(kind, name, spec, actor or self.actor, expect=expect)
        self._changed()
        return written

    def create_record(
        self, kind: RecordKind[S], name: str, spec: S, *, actor: str | None = None
    ) -> Record[S]:
        """Create a record; ``RecordExists`` if its kind has one of that name."""
        return self.write_record(kind, name, spec, expect="absent", actor=actor)[0]

    def replace_record(
        self,
        kind: RecordKind[S],
        name: str,
        spec: S,
        *,
        revision: int | None = None,
        actor: str | None = None,
    ) -> Record[S]:
        """Replace a record (only at ``revision``, if given: ``RecordConflict`` otherwise)."""
        expect: Expect = "present" if revision is None else revision
        return self.write_record(kind, name, spec, expect=expect, actor=actor)[0]

    def put_record(
        self, kind: RecordKind[S], name: str, spec: S, *, actor: str | None = None
    ) -> Record[S]:
        """Create a record, or replace it whatever its revision."""
        return self.write_record(kind, name, spec, expect=None, actor=actor)[0]

    def act_on_record(
        self,
        kind: RecordKind[S],
        name: str,
        action: str,
        *,
        revision: int | None = None,
        actor: str | None = None,
    ) -> Record[S]:
        """Run one of the kind's actions on the record (see the store's)."""
        done = self.store.act_on_record(kind, name, action, actor or self.actor, revision=revision)
        self._changed()
        return done

    def get_record(self, kind: RecordKind[S], name: str) -> Record[S]:
        """A record; ``RecordNotFound`` if absent."""
        return self.store.get_record(kind, name)

    def list_records(
        self, kind: RecordKind[S], *, limit: int = 100, after: str | None = None
    ) -> list[Record[S]]:
        """Up to ``limit`` records of a kind, by name, after the name ``after``."""
        return self.store.list_records(kind, limit=limit, after=after)

    def record_history(
        self, kind: RecordKind[S], name: str, *, limit: int = 100
    ) -> list[RecordRevision[S]]:
        """A record's newest revisions, newest first (kept after it is deleted)."""
        return self.store.record_history(kind, name, limit=limit)

    def delete_record(
        self,
        kind: RecordKind[Any],
        name: str,
        *,
        revision: int | None = None,
        actor: str | None = None,
    ) -> None:
        """Delete a record (only at ``revision``, if given: ``RecordConflict`` otherwise)."""
        self.store.delete_record(kind, name, actor or self.actor, revision=revision)
        self._changed()

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

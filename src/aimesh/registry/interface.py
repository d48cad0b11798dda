"""The one interface the CLI and other services use, local or remote alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aimesh.auth import Identity, service_key
from aimesh.config import Settings
from aimesh.registry.kinds import Record, RecordKind, RecordRevision, S
from aimesh.registry.types import (
    Alias,
    ArtifactInfo,
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
)


class Registry(Protocol):
    """What a registry offers, whether it is this process's store or a service over HTTP."""

    def close(self) -> None: ...
    def create_model(self, spec: ModelCreate) -> ModelInfo: ...
    def update_model(self, name: str, change: ModelUpdate) -> ModelInfo: ...
    def list_models(self) -> list[ModelInfo]: ...
    def get_model(self, name: str) -> ModelInfo: ...
    def upload_artifact(self, path: Path) -> ArtifactInfo: ...
    def fetch_artifact(self, version: ModelVersion) -> Path: ...
    def download_artifact(self, name: str, ref: str | int, dest: Path) -> ModelVersion: ...
    def create_version(self, name: str, spec: VersionCreate) -> ModelVersion: ...
    def list_versions(self, name: str) -> list[ModelVersion]: ...
    def get_version(self, name: str, ref: str | int) -> ModelVersion: ...
    def archive_version(self, name: str, number: int) -> ModelVersion: ...
    def log_metrics(self, name: str, number: int, metrics: dict[str, float]) -> ModelVersion: ...
    def set_alias(self, name: str, alias: str, number: int) -> Alias: ...
    def rollback_alias(
        self, name: str, alias: str, *, from_version: int | None = None
    ) -> Alias: ...
    def delete_alias(self, name: str, alias: str) -> None: ...
    def list_aliases(self, name: str) -> list[Alias]: ...
    def history(self, name: str, *, limit: int = 100) -> list[HistoryEntry]: ...
    def create_record(self, kind: RecordKind[S], name: str, spec: S) -> Record[S]: ...
    def replace_record(
        self, kind: RecordKind[S], name: str, spec: S, *, revision: int | None = None
    ) -> Record[S]: ...
    def put_record(self, kind: RecordKind[S], name: str, spec: S) -> Record[S]: ...
    def act_on_record(
        self, kind: RecordKind[S], name: str, action: str, *, revision: int | None = None
    ) -> Record[S]: ...
    def get_record(self, kind: RecordKind[S], name: str) -> Record[S]: ...
    def list_records(
        self, kind: RecordKind[S], *, limit: int = 100, after: str | None = None
    ) -> list[Record[S]]: ...
    def record_history(
        self, kind: RecordKind[S], name: str, *, limit: int = 100
    ) -> list[RecordRevision[S]]: ...
    def delete_record(
        self, kind: RecordKind[Any], name: str, *, revision: int | None = None
    ) -> None: ...
    def create_key(self, spec: KeyCreate) -> NewKey: ...
    def list_keys(self) -> list[KeyInfo]: ...
    def revoke_key(self, name: str) -> KeyInfo: ...
    def collect_garbage(self, *, dry_run: bool = False) -> GarbageReport: ...


def registry_key(settings: Settings) -> str:
    """The key sent to ``registry.url``: ``registry.api_key``, else the service credential."""
    if settings.registry.api_key is not None:
        return settings.registry.api_key.get_secret_value()
    return service_credential(settings)


def service_credential(settings: Settings) -> str:
    """This deployment's service credential: ``auth.service_key``, else the home's own."""
    configured = settings.auth.service_key
    return service_key(settings.home_dir, configured.get_secret_value() if configured else None)


def open_registry(settings: Settings, *, on_behalf: Identity | None = None) -> Registry:
    """The registry service at ``registry.url`` if one is configured, else the local store.

    The service is called with ``registry.api_key`` or the service credential; with
    ``on_behalf`` (a worker running a job for its submitter), the service credential acts
    for that identity: the registry checks and records it, not the service's.
    """
    if settings.registry.url:
        from aimesh.registry.client import RegistryClient

        return RegistryClient(
            settings.registry.url,
            timeout=settings.registry.request_timeout_s,
            cache_dir=settings.cache_dir,
            api_key=registry_key(settings),
            on_behalf=on_behalf,
        )
    from aimesh.registry.service import LocalRegistry

    return LocalRegistry.from_settings(settings, actor=on_behalf.name if on_behalf else None)

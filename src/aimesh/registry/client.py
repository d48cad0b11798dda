"""The registry over HTTP: the same methods as :class:`LocalRegistry`, for remote use."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from aimesh.auth import IDENTITY_HEADER, Identity, KeyEntry
from aimesh.errors import (
    AimeshError,
    ArtifactTampered,
    KindNotFound,
    RouteNotFound,
    StoreUnavailable,
    error_from_body,
)
from aimesh.registry.api import ACTOR_HEADER, PREFIX
from aimesh.registry.artifacts import CHUNK, file_chunks, sha256_file
from aimesh.registry.kinds import Record, RecordKind, RecordRevision, S
from aimesh.registry.service import default_actor
from aimesh.registry.types import (
    Alias,
    AliasMove,
    AliasRollback,
    ArtifactInfo,
    GarbageReport,
    HistoryEntry,
    KeyCreate,
    KeyDigest,
    KeyInfo,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    NewKey,
    VersionCreate,
)

T = TypeVar("T")


class RegistryClient:
    """Talks to ``aimesh registry serve``; errors come back as the same AimeshError classes."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        cache_dir: Path,
        actor: str | None = None,
        api_key: str | None = None,
        on_behalf: Identity | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._cache = cache_dir / "artifacts"
        headers = {ACTOR_HEADER: actor or default_actor()}
        if api_key is not None:  # the service credential, or a key of its own
            headers["X-API-Key"] = api_key
        if on_behalf is not None:  # believed with the service credential only
            headers[IDENTITY_HEADER] = on_behalf.header()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call to ``path`` under the registry's own prefix (``/api/registry``)."""
        return self._request(method, PREFIX + path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"cannot reach the registry at {self.url}: {exc}") from exc
        _raise_for_error(response)
        return response

    def _call(self, kind: type[T], method: str, path: str, **kwargs: Any) -> T:
        return TypeAdapter(kind).validate_json(self._send(method, path, **kwargs).content)

    # -- models ---------------------------------------------------------------------------

    def create_model(self, spec: ModelCreate) -> ModelInfo:
        """Create a model."""
        return self._call(ModelInfo, "POST", "/models", json=_dump(spec))

    def update_model(self, name: str, change: ModelUpdate) -> ModelInfo:
        """Change a model's description or tags."""
        return self._call(ModelInfo, "PATCH", f"/models/{name}", json=_dump(change))

    def list_models(self) -> list[ModelInfo]:
        """Every model."""
        return self._call(list[ModelInfo], "GET", "/models")

    def get_model(self, name: str) -> ModelInfo:
        """One model."""
        return self._call(ModelInfo, "GET", f"/models/{name}")

    # -- artifacts ------------------------------------------------------------------------

    def upload_artifact(self, path: Path) -> ArtifactInfo:
        """Upload a file, declaring its sha256 so that a corrupted transfer is refused."""
        digest = sha256_file(path)
        try:
            return self._call(ArtifactInfo, "GET", f"/artifacts/{digest}")
        except AimeshError as exc:
            # Absent, or stored but damaged: these bytes (re)place it.
            if exc.code not in ("artifact_not_found", "artifact_tampered"):
                raise
        with path.open("rb") as f:
            return self._call(
                ArtifactInfo,
                "POST",
                "/artifacts",
                params={"sha256": digest},
                content=file_chunks(f),
                headers={
                    "content-type": "application/octet-stream",
                    "content-length": str(path.stat().st_size),
                },
            )

    def fetch_artifact(self, version: ModelVersion) -> Path:
        """A local, just-verified copy of a version's artifact, cached by sha256."""
        path = self._cache / version.artifact_sha256
        if not path.exists():
            self._download(version, path)
        actual = sha256_file(path)
        if actual != version.artifact_sha256:
            path.unlink(missing_ok=True)
            raise ArtifactTampered(version.artifact_sha256, actual)
        return path

    def _download(self, version: ModelVersion, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._stream(
                    f"/models/{version.model}/versions/{version.version}/artifact"
                ):
                    out.write(chunk)
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)

    def _stream(self, path: str) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", PREFIX + path) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                yield from response.iter_bytes(CHUNK)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"cannot reach the registry at {self.url}: {exc}") from exc

    def download_artifact(self, name: str, ref: str | int, dest: Path) -> ModelVersion:
        """Write a version's verified artifact to ``dest``."""
        version = self.get_version(name, ref)
        shutil.copyfile(self.fetch_artifact(version), dest)
        return version

    # -- versions -------------------------------------------------------------------------

    def create_version(self, name: str, spec: VersionCreate) -> ModelVersion:
        """Register an uploaded artifact as the next version of a model."""
        return self._call(ModelVersion, "POST", f"/models/{name}/versions", json=_dump(spec))

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model."""
        return self._call(list[ModelVersion], "GET", f"/models/{name}/versions")

    def get_version(self, name: str, ref: str | int) -> ModelVersion:
        """A version by number, alias or ``latest``."""
        return self._call(ModelVersion, "GET", f"/models/{name}/versions/{ref}")

    def archive_version(self, name: str, number: int) -> ModelVersion:
        """Archive a version."""
        return self._call(ModelVersion, "POST", f"/models/{name}/versions/{number}/archive")

    def log_metrics(self, name: str, number: int, metrics: dict[str, float]) -> ModelVersion:
        """Add new metrics to a version."""
        return self._call(
            ModelVersion, "POST", f"/models/{name}/versions/{number}/metrics", json=metrics
        )

    def collect_garbage(self, *, dry_run: bool = False) -> GarbageReport:
        """Remove unused artifacts and abandoned uploads past the grace period (admin)."""
        return self._call(GarbageReport, "POST", "/gc", params={"dry_run": dry_run})

    # -- aliases and history ----------------------------------------------------------------

    def set_alias(self, name: str, alias: str, number: int) -> Alias:
        """Point an alias at a version."""
        body = _dump(AliasMove(version=number))
        return self._call(Alias, "PUT", f"/models/{name}/aliases/{alias}", json=body)

    def rollback_alias(self, name: str, alias: str, *, from_version: int | None = None) -> Alias:
        """Point an alias back at the version it held before (atomically, in the registry)."""
        body = _dump(AliasRollback(from_version=from_version))
        path = f"/models/{name}/aliases/{alias}/rollback"
        return self._call(Alias, "POST", path, json=body)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        self._send("DELETE", f"/models/{name}/aliases/{alias}")

    def list_aliases(self, name: str) -> list[Alias]:
        """A model's aliases."""
        return self._call(list[Alias], "GET", f"/models/{name}/aliases")

    def history(self, name: str, *, limit: int = 100) -> list[HistoryEntry]:
        """The newest changes to a model."""
        return self._call(
            list[HistoryEntry], "GET", f"/models/{name}/history", params={"limit": limit}
        )

    # -- records of every kind (aimesh.registry.kinds) ---------------------------------------

    def _record_call(
        self,
        kind: RecordKind[Any],
        method: str,
        name: str | None = None,
        tail: str = "",
        **kwargs: Any,
    ) -> httpx.Response:
        path = f"/api/{kind.plural}" + ("" if name is None else f"/{kind.check_name(name)}") + tail
        try:
            return self._request(method, path, **kwargs)
        except RouteNotFound as exc:  # a registry that does not define the kind
            raise KindNotFound(kind.name) from exc

    def _write(self, kind: RecordKind[S], name: str, spec: S, headers: dict[str, str]) -> Record[S]:
        body = kind.dump(spec)
        response = self._record_call(kind, "PUT", name, json=body, headers=headers)
        return kind.record_type.model_validate_json(response.content)

    def create_record(self, kind: RecordKind[S], name: str, spec: S) -> Record[S]:
        """Create a record; ``RecordExists`` if its kind has one of that name."""
        return self._write(kind, name, spec, {"If-None-Match": "*"})

    def replace_record(
        self, kind: RecordKind[S], name: str, spec: S, *, revision: int | None = None
    ) -> Record[S]:
        """Replace a record (only at ``revision``, if given: ``RecordConflict`` otherwise)."""
        return self._write(kind, name, spec, {"If-Match": _tag(revision)})

    def put_record(self, kind: RecordKind[S], name: str, spec: S) -> Record[S]:
        """Create a record, or replace it whatever its revision."""
        return self._write(kind, name, spec, {})

    def act_on_record(
        self, kind: RecordKind[S], name: str, action: str, *, revision: int | None = None
    ) -> Record[S]:
        """Run one of the kind's actions on the record (only at ``revision``, if given)."""
        headers = {} if revision is None else {"If-Match": _tag(revision)}
        response = self._record_call(kind, "POST", name, f"/actions/{action}", headers=headers)
        return kind.record_type.model_validate_json(response.content)

    def get_record(self, kind: RecordKind[S], name: str) -> Record[S]:
        """A record; ``RecordNotFound`` if absent."""
        response = self._record_call(kind, "GET", name)
        return kind.record_type.model_validate_json(response.content)

    def list_records(
        self, kind: RecordKind[S], *, limit: int = 100, after: str | None = None
    ) -> list[Record[S]]:
        """Up to ``limit`` records of a kind, by name, after the name ``after``."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = kind.check_name(after)
        response = self._record_call(kind, "GET", params=params)
        return [kind.record_type.model_validate(item) for item in _array(response)]

    def record_history(
        self, kind: RecordKind[S], name: str, *, limit: int = 100
    ) -> list[RecordRevision[S]]:
        """A record's newest revisions, newest first (kept after it is deleted)."""
        response = self._record_call(kind, "GET", name, "/history", params={"limit": limit})
        return [kind.revision_type.model_validate(item) for item in _array(response)]

    def delete_record(
        self, kind: RecordKind[Any], name: str, *, revision: int | None = None
    ) -> None:
        """Delete a record (only at ``revision``, if given: ``RecordConflict`` otherwise)."""
        headers = {} if revision is None else {"If-Match": _tag(revision)}
        self._record_call(kind, "DELETE", name, headers=headers)

    # -- API keys ---------------------------------------------------------------------------

    def create_key(self, spec: KeyCreate) -> NewKey:
        """Make a key (the answer is the only place it is ever shown)."""
        return self._call(NewKey, "POST", "/keys", json=_dump(spec))

    def list_keys(self) -> list[KeyInfo]:
        """Every key, active first."""
        return self._call(list[KeyInfo], "GET", "/keys")

    def revoke_key(self, name: str) -> KeyInfo:
        """Revoke the active key named ``name``."""
        return self._call(KeyInfo, "DELETE", f"/keys/{name}")

    def key_entries(self) -> list[KeyEntry]:
        """The active keys with their digests (needs the service credential)."""
        digests = self._call(list[KeyDigest], "GET", "/keys/digests")
        return [KeyEntry(d.name, d.sha256, frozenset(d.scopes)) for d in digests]


def _array(response: httpx.Response) -> list[Any]:
    found = response.json()
    if not isinstance(found, list):
        raise StoreUnavailable("the registry answered a listing with no JSON array")
    return found


def _tag(revision: int | None) -> str:
    """The ``If-Match`` value of a revision (``*``: any)."""
    return "*" if revision is None else f'"{revision}"'


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_unset=True)


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["error"])
        details = body.get("details") if isinstance(body.get("details"), dict) else None
    except (ValueError, KeyError, TypeError):
        raise StoreUnavailable(
            f"registry answered {response.status_code} without an error body"
        ) from None
    raise error_from_body(code, message, details)

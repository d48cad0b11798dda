"""Pushing a model file: the steps every client takes, written once over :class:`Registry`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aimesh import runtimes
from aimesh.errors import ArtifactNotFound, InvalidRequest
from aimesh.protocol import Signature
from aimesh.registry.interface import Registry
from aimesh.registry.types import (
    Lineage,
    ModelVersion,
    VersionCreate,
    check_model_name,
)


def push_model(
    registry: Registry,
    name: str,
    path: Path,
    *,
    framework: str | None = None,
    aliases: Sequence[str] = (),
    description: str = "",
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    lineage: Lineage | None = None,
    signature: Signature | None = None,
    trusted: bool = False,
    trusted_types: Sequence[str] = (),
) -> ModelVersion:
    """Upload ``path`` and register it as the next version of ``name`` (created if new).

    A refused push (no trust, a file its runtime cannot read) leaves nothing behind.
    """
    check_model_name(name)
    if not path.is_file():
        raise InvalidRequest(f"{path} is not a file")
    framework = framework or runtimes.detect_framework(path)
    if framework is None:
        raise InvalidRequest(
            f"cannot tell the framework of {path.name}; pass --framework "
            f"({', '.join(runtimes.frameworks())})"
        )
    artifact = registry.upload_artifact(path)
    spec = VersionCreate(
        # The model is created with its first version, in one transaction: a refused
        # version leaves no empty model (and the registry removes its unused blob).
        create_model=True,
        artifact_sha256=artifact.sha256,
        framework=framework,
        signature=signature,
        metrics=metrics or {},
        lineage=lineage or Lineage(),
        description=description,
        tags=tags or {},
        trusted=trusted,
        trusted_types=list(trusted_types),
        aliases=list(aliases),
    )
    try:
        return registry.create_version(name, spec)
    except ArtifactNotFound:
        # A concurrent push of the same bytes was refused and removed the blob between our
        # upload and our version: upload it again, once.
        registry.upload_artifact(path)
        return registry.create_version(name, spec)

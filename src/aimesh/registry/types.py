"""The registry's domain objects, as they cross process boundaries (REST, CLI, events)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from aimesh.auth import KEY_NAME_PATTERN, Scope
from aimesh.errors import InvalidName
from aimesh.protocol import ALIAS_NAME, MODEL_NAME, STORED_INT_MAX, Signature

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
LATEST = "latest"
"""A reserved version reference: the highest version that is not archived."""

Scalar = str | int | float | bool | None
Metrics = dict[str, FiniteFloat]
"""A version's metrics by name: numbers a database stores (no NaN, no infinity)."""


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidName`."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid model name {name!r}: use 1-128 letters, digits, '-' or '_', "
            "starting with a letter or digit",
            name=name,
        )
    return name


def check_alias_name(name: str) -> str:
    """Return ``name`` if it is a valid alias, else raise :class:`InvalidName`."""
    if not ALIAS_NAME.fullmatch(name) or name == LATEST:
        raise InvalidName(
            f"invalid alias {name!r}: use 1-64 letters, digits, '-' or '_', starting with a "
            f"letter ({LATEST!r} is reserved)",
            name=name,
        )
    return name


def check_sha256(digest: str) -> str:
    """Return ``digest`` if it is a lowercase hex sha256, else raise :class:`InvalidName`."""
    if not SHA256_HEX.fullmatch(digest):
        raise InvalidName(f"invalid sha256 {digest!r}: expected 64 lowercase hex digits")
    return digest


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Lineage(_Frozen):
    """Where a version came from: its data, its trainer and anything else worth keeping."""

    dataset: str | None = Field(default=None, description="Dataset reference, e.g. transactions@3.")
    trainer: str | None = Field(
        default=None, description="Trainer, e.g. sklearn:LogisticRegression."
    )
    params: dict[str, Scalar] = Field(default_factory=dict, description="Training parameters.")
    code_version: str | None = Field(default=None, description="Git commit or package version.")
    job_id: str | None = Field(default=None, description="The training job that made it.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Free-form lineage.")


class ArtifactInfo(_Frozen):
    """A blob in the content-addressed artifact store."""

    sha256: str
    size: int


class ModelCreate(_Frozen):
    """What a client sends to create a model."""

    # The rule as the document shows it; the validator below enforces it (invalid_name).
    name: str = Field(json_schema_extra={"pattern": MODEL_NAME.pattern})
    description: str = Field(default="", max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_model_name(value)


class ModelUpdate(_Frozen):
    """What a client sends to change a model's description or tags (None: unchanged)."""

    description: str | None = Field(default=None, max_length=10_000)
    tags: dict[str, str] | None = None


class VersionCreate(_Frozen):
    """What a client sends to create a version of a model from an uploaded artifact."""

    artifact_sha256: str = Field(json_schema_extra={"pattern": SHA256_HEX.pattern})
    framework: str = Field(min_length=1, max_length=64)
    signature: Signature | None = Field(
        default=None, description="Unset: read from the artifact by its runtime."
    )
    metrics: Metrics = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    description: str = Field(default="", max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict)
    trusted: bool = Field(
        default=False,
        description="Allow formats that run code when loaded (pickle, joblib, Python): "
        "needs registry.allow_code_artifacts and the admin scope.",
    )
    trusted_types: list[str] = Field(
        default_factory=list,
        description="Extra types a skops artifact may hold: beyond scikit-learn's own, needs "
        "registry.allow_code_artifacts and the admin scope.",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="Aliases to point at it (not `latest`).",
        json_schema_extra={"items": {"type": "string", "pattern": ALIAS_NAME.pattern}},
    )
    create_model: bool = Field(
        default=False,
        description="Create the model too when it does not exist, in the same transaction "
        "as the version: a refused version then leaves no empty model behind.",
    )

    @field_validator("artifact_sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        return check_sha256(value)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        return [check_alias_name(a) for a in value]


class AliasMove(_Frozen):
    """What a client sends to point an alias at a version."""

    version: int = Field(ge=1, le=STORED_INT_MAX)


class ModelVersion(_Frozen):
    """One immutable version of a model."""

    model: str
    version: int
    framework: str
    artifact_sha256: str
    artifact_size: int
    signature: Signature | None
    metrics: dict[str, float]
    lineage: Lineage
    description: str
    tags: dict[str, str]
    trusted: bool
    trusted_types: list[str]
    trusted_by: str | None = Field(
        default=None, description="Who decided to trust it (an admin identity), if anyone."
    )
    archived: bool
    created_at: datetime
    created_by: str
    aliases: list[str] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        """``name@version``, the way users write it."""
        return f"{self.model}@{self.version}"


class Alias(_Frozen):
    """A name that points at one version of a model."""

    model: str
    name: str
    version: int
    updated_at: datetime
    updated_by: str
    previous: int | None = Field(
        default=None,
        description="In the answer to a move or a rollback: the version it pointed at "
        "before (None when it was new, and in listings).",
    )


class AliasRollback(_Frozen):
    """What a client may send to roll an alias back: the version it expects it at now."""

    from_version: int | None = Field(
        default=None,
        ge=1,
        le=STORED_INT_MAX,
        description="Roll back only if the alias points at this version now (409 "
        "alias_moved otherwise): what the caller saw was not moved meanwhile.",
    )


class ModelInfo(_Frozen):
    """A model with its aliases and latest version number."""

    name: str
    description: str
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime
    latest_version: int | None
    aliases: dict[str, int]


class HistoryEntry(_Frozen):
    """One recorded change to the registry."""

    seq: int
    kind: str
    action: str
    model: str
    version: int | None
    alias: str | None
    actor: str
    at: datetime
    data: dict[str, Scalar]


class KeyCreate(_Frozen):
    """A request for a new API key."""

    name: str = Field(
        pattern=KEY_NAME_PATTERN, description="Who holds the key; unique among active keys."
    )
    scopes: list[Scope] = Field(
        min_length=1, description="read, infer, write, admin (write includes read and infer)."
    )


class KeyInfo(_Frozen):
    """An API key as the registry shows it: never the key, never its digest."""

    name: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None


class NewKey(_Frozen):
    """A key just made: the only time the key itself is shown."""

    key: str = Field(description="The key; not stored anywhere, shown this once.")
    info: KeyInfo


class KeyDigest(_Frozen):
    """An active key as services need it to check requests (the service credential only)."""

    name: str
    sha256: str
    scopes: list[str]


class CollectedFile(_Frozen):
    """One file garbage collection removed (or, in a dry run, would remove)."""

    kind: Literal["artifact", "staging"] = Field(
        description="artifact: a blob no version uses; staging: an abandoned upload."
    )
    name: str = Field(description="The blob's sha256, or the staging file's name.")
    size: int
    age_s: float = Field(description="Seconds since it was last written.")


class GarbageReport(_Frozen):
    """What a garbage collection removed, and the bytes it freed."""

    dry_run: bool
    removed: list[CollectedFile]
    bytes_freed: int
    kept_referenced: int = Field(description="Blobs kept because a version uses them.")
    kept_young: int = Field(description="Files kept because they are inside the grace period.")

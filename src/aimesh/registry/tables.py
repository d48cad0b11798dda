"""The registry's tables. Schema changes go through an Alembic migration in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, in UTC, to the microsecond."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the registry's tables."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: sa.JSON,
        list[Any]: sa.JSON,
        datetime: UTCDateTime,
    }


class ModelRow(Base):
    """A named model; ``latest_version`` is the counter that numbers its versions."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    latest_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class VersionRow(Base):
    """An immutable version: an artifact plus what is known about it."""

    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version", name="uq_model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("models.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int]
    framework: Mapped[str] = mapped_column(sa.String(64))
    artifact_sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    artifact_size: Mapped[int] = mapped_column(sa.BigInteger)
    signature: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trusted: Mapped[bool] = mapped_column(default=False)
    trusted_types: Mapped[list[Any]] = mapped_column(default=list)
    trusted_by: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    """Who made the trust decision (``trusted`` or extra types): the admin identity."""
    archived: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(sa.String(256))


class MetricRow(Base):
    """One metric of a version; a row each, so that logging metrics never rewrites others."""

    __tablename__ = "version_metrics"

    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    value: Mapped[float] = mapped_column(sa.Float)


class AliasRow(Base):
    """An alias of a model, pointing at one of its versions."""

    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(256))


class EventRow(Base):
    """Every change, written in the same transaction as the change itself.

    It is the registry's history (who moved which alias when) and its outbox: rows with no
    ``published_at`` are still to be published on the bus, so an event is never lost when
    the bus is down at the moment of the change.
    """

    __tablename__ = "registry_events"

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    action: Mapped[str] = mapped_column(sa.String(32))
    model: Mapped[str] = mapped_column(sa.String(128), index=True)
    version: Mapped[int | None] = mapped_column(nullable=True)
    alias: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    actor: Mapped[str] = mapped_column(sa.String(256))
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class RecordRow(Base):
    """The current record of each kind and name (:mod:`aimesh.registry.kinds`)."""

    __tablename__ = "records"

    kind: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    revision: Mapped[int] = mapped_column(sa.BigInteger)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(sa.String(256))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(256))


class RecordRevisionRow(Base):
    """Every revision of every record, deletes included: its history, and the counter a
    re-created record's revisions go on from."""

    __tablename__ = "record_revisions"

    kind: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    revision: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    action: Mapped[str] = mapped_column(sa.String(16))
    spec: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(256))


class ApiKeyRow(Base):
    """An API key: its sha256 (never the key), its scopes, who made and who revoked it.

    A name is unique among active keys only: a revoked key's name may be given again.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        sa.Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(sa.String(256))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)

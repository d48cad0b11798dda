"""The registry's metadata in SQL: SQLite by default, PostgreSQL by URL, one code path.

Every change writes its :class:`EventRow` in the same transaction, so history and the
bus outbox can never disagree with the data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aimesh.auth import KeyEntry
from aimesh.errors import (
    AliasMoved,
    AliasNotFound,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    MetricExists,
    ModelExists,
    ModelNotFound,
    NoPreviousVersion,
    RecordConflict,
    StoreUnavailable,
    VersionArchived,
    VersionNotFound,
    foreign_message,
)
from aimesh.protocol import STORED_INT_MAX, Signature, whole_number
from aimesh.registry import migrate, records
from aimesh.registry.kinds import (
    ActionCall,
    Expect,
    Record,
    RecordKind,
    RecordRevision,
    S,
    registered,
)
from aimesh.registry.tables import (
    AliasRow,
    ApiKeyRow,
    EventRow,
    MetricRow,
    ModelRow,
    VersionRow,
    utcnow,
)
from aimesh.registry.types import (
    LATEST,
    Alias,
    HistoryEntry,
    KeyInfo,
    Lineage,
    ModelCreate,
    ModelInfo,
    ModelUpdate,
    ModelVersion,
    VersionCreate,
    check_alias_name,
    check_model_name,
)


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``, tuned so that several processes can share a SQLite file."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Take the write lock when a transaction starts (BEGIN IMMEDIATE below): a deferred
            # transaction that reads and then writes deadlocks against a concurrent writer in
            # another process instead of waiting for it.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @sa_event.listens_for(engine, "begin")
        def _begin_immediate(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except (ImportError, sa.exc.ArgumentError) as exc:
        raise StoreUnavailable(
            f"cannot use a registry database of scheme {url.partition(':')[0]!r}: "
            f"{foreign_message(exc)}"
        ) from exc


class RegistryStore:
    """Models, versions, aliases, metrics and history in a SQL database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> RegistryStore:
        """Open (and migrate, if needed) the database at ``url``."""
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        try:
            migrate.upgrade(engine)
        except OperationalError as exc:
            # The driver's words (and the database's file or host) stay in the log.
            raise StoreUnavailable("cannot reach the registry database") from exc
        return cls(engine)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise StoreUnavailable("the registry database failed; try again shortly") from exc

    # -- models ---------------------------------------------------------------------------

    def create_model(self, spec: ModelCreate, actor: str) -> ModelInfo:
        """Create a model; :class:`ModelExists` if the name is taken."""
        now = utcnow()
        try:
            with self._transaction() as s:
                row = ModelRow(
                    name=spec.name,
                    description=spec.description,
                    tags=dict(spec.tags),
                    latest_version=0,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                s.flush()
                _record(s, "model", "created", spec.name, actor=actor)
                return _model_info(s, row)
        except IntegrityError as exc:
            raise ModelExists(f"model {spec.name!r} already exists", name=spec.name) from exc

    def update_model(self, name: str, change: ModelUpdate, actor: str) -> ModelInfo:
        """Change a model's description or tags."""
        with self._transaction() as s:
            row = _model_row(s, name)
            if change.description is not None:
                row.description = change.description
            if change.tags is not None:
                row.tags = dict(change.tags)
            row.updated_at = utcnow()
            _record(s, "model", "updated", name, actor=actor)
            return _model_info(s, row)

    def list_models(self) -> list[ModelInfo]:
        """Every model, by name."""
        with self._transaction() as s:
            rows = s.scalars(sa.select(ModelRow).order_by(ModelRow.name)).all()
            aliases = _aliases_by_model(s, [r.id for r in rows])
            return [_model_info(s, r, aliases.get(r.id, {})) for r in rows]

    def get_model(self, name: str) -> ModelInfo:
        """One model; :class:`ModelNotFound` if absent."""
        with self._transaction() as s:
            return _model_info(s, _model_row(s, name))

    # -- versions -------------------------------------------------------------------------

    def create_version(
        self,
        name: str,
        spec: VersionCreate,
        *,
        size: int,
        signature: Signature | None,
        actor: str,
        trusted_by: str | None = None,
    ) -> ModelVersion:
        """Add the next version of a model, and point ``spec.aliases`` at it, atomically.

        The version number comes from an atomic increment of the model's counter, so that
        concurrent pushes (several processes, SQLite or PostgreSQL) get distinct numbers.
        With ``spec.create_model``, a missing model is created in the same transaction.
        """
        try:
            return self._create_version(name, spec, size, signature, actor, trusted_by)
        except IntegrityError:
            if not spec.create_model:
                raise
            # Another writer created the model between our look and our insert: it exists
            # now, so the second attempt finds it.
            return self._create_version(name, spec, size, signature, actor, trusted_by)

    def _create_version(
        self,
        name: str,
        spec: VersionCreate,
        size: int,
        signature: Signature | None,
        actor: str,
        trusted_by: str | None,
    ) -> ModelVersion:
        now = utcnow()
        with self._transaction() as s:
            if spec.create_model and _find_model(s, name) is None:
                s.add(
                    ModelRow(
                        name=name,
                        description="",
                        tags={},
                        latest_version=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
                s.flush()
                _record(s, "model", "created", name, actor=actor)
            model = _model_row(s, name)
            number = s.execute(
                sa.update(ModelRow)
                .where(ModelRow.id == model.id)
                .values(latest_version=ModelRow.latest_version + 1, updated_at=now)
                .returning(ModelRow.latest_version)
            ).scalar_one()
            row = VersionRow(
                model_id=model.id,
                version=number,
                framework=spec.framework,
                artifact_sha256=spec.artifact_sha256,
                artifact_size=size,
                signature=signature.model_dump() if signature else None,
                lineage=spec.lineage.model_dump(mode="json"),
                description=spec.description,
                tags=dict(spec.tags),
                trusted=spec.trusted,
                trusted_types=list(spec.trusted_types),
                trusted_by=trusted_by,
                archived=False,
                created_at=now,
                created_by=actor,
            )
            s.add(row)
            s.flush()
            s.add_all(MetricRow(version_id=row.id, key=k, value=v) for k, v in spec.metrics.items())
            _record(
                s,
                "version",
                "created",
                name,
                version=number,
                actor=actor,
                data={
                    "sha256": spec.artifact_sha256,
                    "framework": spec.framework,
                    "trusted_by": trusted_by,
                },
            )
            for alias in spec.aliases:
                _move_alias(s, model, alias, row, actor)
            return _version(s, name, row)

    def list_versions(self, name: str, *, include_archived: bool = True) -> list[ModelVersion]:
        """Every version of a model, oldest first."""
        with self._transaction() as s:
            model = _model_row(s, name)
            query = sa.select(VersionRow).where(VersionRow.model_id == model.id)
            if not include_archived:
                query = query.where(VersionRow.archived.is_(False))
            rows = s.scalars(query.order_by(VersionRow.version)).all()
            return [_version(s, name, r) for r in rows]

    def get_version(self, name: str, ref: str | int) -> ModelVersion:
        """A version by number, by alias, or ``latest``."""
        with self._transaction() as s:
            return _version(s, name, _resolve(s, _model_row(s, name), ref))

    def archive_version(self, name: str, number: int, actor: str) -> ModelVersion:
        """Mark a version archived; refused while an alias points at it."""
        with self._transaction() as s:
            model = _model_row(s, name)
            row = _version_row(s, model, number)
            pointing = s.scalars(
                sa.select(AliasRow.name).where(AliasRow.version_id == row.id)
            ).all()
            if pointing:
                raise VersionArchived(
                    f"{name}@{number} is served by alias(es) {', '.join(pointing)}: "
                    "move them first",
                    aliases=list(pointing),
                )
            if not row.archived:
                row.archived = True
                _record(s, "version", "archived", name, version=number, actor=actor)
            return _version(s, name, row)

    def log_metrics(self, name: str, number: int, metrics: dict[str, float]) -> ModelVersion:
        """Add metrics to a version; an existing metric is never overwritten."""
        with self._transaction() as s:
            row = _version_row(s, _model_row(s, name), number)
            existing = set(
                s.scalars(sa.select(MetricRow.key).where(MetricRow.version_id == row.id)).all()
            )
            clash = sorted(existing & metrics.keys())
            if clash:
                raise MetricExists(
                    f"{name}@{number} already has metric(s) {', '.join(clash)}; versions are "
                    "immutable",
                    metrics=clash,
                )
            s.add_all(MetricRow(version_id=row.id, key=k, value=v) for k, v in metrics.items())
            s.flush()
            return _version(s, name, row)

    # -- aliases --------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, number: int, actor: str) -> Alias:
        """Point ``alias`` at version ``number``, atomically, recording who moved it."""
        check_alias_name(alias)
        with self._transaction() as s:
            model = _model_row(s, name)
            return _move_alias(s, model, alias, _version_row(s, model, number), actor)

    def rollback_alias(
        self, name: str, alias: str, actor: str, *, from_version: int | None = None
    ) -> Alias:
        """Point ``alias`` back at the version it held before, atomically, recording it.

        "Before" is read from the alias's history: each rollback undoes the newest move
        not undone yet, so rolling back twice goes two moves back (moves that changed
        nothing, and history from before the alias was last deleted, do not count).
        :class:`NoPreviousVersion` when there is none; with ``from_version``,
        :class:`AliasMoved` unless the alias points there now. The alias row is locked
        from the look at its history to the move, so no concurrent move slips between.
        The move is an ``alias moved`` event like any other (followers switch), its data
        saying ``rollback``, ``from`` and ``to``.
        """
        check_alias_name(alias)
        with self._transaction() as s:
            model = _model_row(s, name)
            row = s.get(AliasRow, (model.id, alias), with_for_update=True)
            if row is None:
                raise AliasNotFound(f"model {name!r} has no alias {alias!r}", alias=alias)
            current = s.get_one(VersionRow, row.version_id).version
            if from_version is not None and from_version != current:
                raise AliasMoved(name, alias, from_version, current)
            target = _version_before(s, name, alias)
            if target is None:
                raise NoPreviousVersion(name, alias)
            back = {"rollback": True, "from": current, "to": target}
            return _move_alias(s, model, alias, _version_row(s, model, target), actor, back)

    def delete_alias(self, name: str, alias: str, actor: str) -> None:
        """Remove an alias."""
        with self._transaction() as s:
            model = _model_row(s, name)
            row = s.get(AliasRow, (model.id, alias))
            if row is None:
                raise AliasNotFound(f"model {name!r} has no alias {alias!r}", alias=alias)
            number = s.get_one(VersionRow, row.version_id).version
            s.delete(row)
            _record(s, "alias", "deleted", name, version=number, alias=alias, actor=actor)

    def list_aliases(self, name: str) -> list[Alias]:
        """A model's aliases, by name."""
        with self._transaction() as s:
            return _list_aliases(s, _model_row(s, name))

    # -- records of every kind (aimesh.registry.kinds) --------------------------------------

    def write_record(
        self, kind: RecordKind[S], name: str, spec: S, actor: str, *, expect: Expect
    ) -> tuple[Record[S], bool]:
        """Create or replace a record as ``expect`` allows; the record, and if it was created.

        ``expect``: ``absent`` (create: :class:`RecordExists` if there is one), ``present``
        (replace: :class:`RecordNotFound` if there is none), a revision (replace at exactly
        that one: :class:`RecordConflict` otherwise), None (either).
        """
        try:
            return self._write_record(kind, name, spec, actor, expect)
        except IntegrityError:
            # Another writer created it between our look and our insert: it exists now,
            # so the second attempt replaces it or refuses as ``expect`` says.
            return self._write_record(kind, name, spec, actor, expect)

    def _write_record(
        self, kind: RecordKind[S], name: str, spec: S, actor: str, expect: Expect
    ) -> tuple[Record[S], bool]:
        with self._transaction() as s:
            record, action = records.write(
                s, kind, name, spec, expect=expect, actor=actor, state=_ActionState(s, actor)
            )
            _record(s, kind.name, action, name, actor=actor, data={"revision": record.revision})
            return record, action == "created"

    def act_on_record(
        self,
        kind: RecordKind[S],
        name: str,
        action: str,
        actor: str,
        *,
        revision: int | None = None,
    ) -> Record[S]:
        """Run the kind's ``action`` on the record and write what it returns, in one
        transaction with what the action itself moved (an alias). :class:`RecordConflict`
        if it is not at ``revision`` (when given) or changes meanwhile; ``InvalidRequest``
        for an action the kind has not."""
        run = registered(kind).actions.get(action)
        if run is None:
            known = ", ".join(sorted(kind.actions)) or "none"
            raise InvalidRequest(f"a {kind.name} has no action {action!r} (it has: {known})")
        with self._transaction() as s:
            current = records.get(s, kind, name)
            if revision is not None and current.revision != revision:
                raise RecordConflict(kind.name, name, revision, current.revision)
            state = _ActionState(s, actor)
            spec = run(ActionCall(record=current, actor=actor, now=utcnow(), state=state))
            record, done = records.write(
                s, kind, name, spec, expect=current.revision, actor=actor, state=state
            )
            data: dict[str, Any] = {"revision": record.revision, "action": action}
            _record(s, kind.name, done, name, actor=actor, data=data)
            return record

    def get_record(self, kind: RecordKind[S], name: str) -> Record[S]:
        """A record; :class:`RecordNotFound` if absent."""
        with self._transaction() as s:
            return records.get(s, kind, name)

    def list_records(
        self, kind: RecordKind[S], *, limit: int = 100, after: str | None = None
    ) -> list[Record[S]]:
        """Up to ``limit`` records of a kind by name, after the name ``after``."""
        with self._transaction() as s:
            return records.listing(s, kind, limit=limit, after=after)

    def record_history(
        self, kind: RecordKind[S], name: str, *, limit: int = 100
    ) -> list[RecordRevision[S]]:
        """A record's newest revisions, newest first (kept after it is deleted)."""
        with self._transaction() as s:
            return records.history(s, kind, name, limit=limit)

    def delete_record(
        self, kind: RecordKind[Any], name: str, actor: str, *, revision: int | None = None
    ) -> int:
        """Delete a record (only at ``revision``, if given); the revision of the delete."""
        with self._transaction() as s:
            deleted = records.delete(s, kind, name, expect=revision, actor=actor)
            _record(s, kind.name, "deleted", name, actor=actor, data={"revision": deleted})
            return deleted

    # -- history and outbox ---------------------------------------------------------------

    def history(self, name: str, *, limit: int = 100) -> list[HistoryEntry]:
        """The newest changes to a model (itself, its versions and aliases), newest first."""
        with self._transaction() as s:
            _model_row(s, name)
            rows = s.scalars(
                sa.select(EventRow)
                .where(EventRow.model == name, EventRow.kind.in_(_MODEL_EVENTS))
                .order_by(EventRow.seq.desc())
                .limit(limit)
            ).all()
            return [_history(r) for r in rows]

    # -- API keys (only their digests) ---------------------------------------------------------

    def create_key(self, name: str, sha256: str, scopes: Sequence[str], actor: str) -> KeyInfo:
        """Store a new key's digest; :class:`KeyExists` if an active key has the name."""
        try:
            with self._transaction() as s:
                row = ApiKeyRow(
                    name=name,
                    sha256=sha256,
                    scopes=sorted(set(scopes)),
                    created_at=utcnow(),
                    created_by=actor,
                )
                s.add(row)
                s.flush()
                _record(s, "key", "created", name, actor=actor, data=_key_data(row))
                return _key_info(row)
        except IntegrityError as exc:
            raise KeyExists(f"an active key is named {name!r}; revoke it first", name=name) from exc

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyInfo]:
        """Every key (revoked ones after the active), oldest first within each."""
        with self._transaction() as s:
            query = sa.select(ApiKeyRow)
            if not include_revoked:
                query = query.where(ApiKeyRow.revoked_at.is_(None))
            rows = s.scalars(query.order_by(ApiKeyRow.revoked_at.is_not(None), ApiKeyRow.id))
            return [_key_info(r) for r in rows.all()]

    def revoke_key(self, name: str, actor: str) -> KeyInfo:
        """Revoke the active key named ``name``; :class:`KeyNotFound` if there is none."""
        with self._transaction() as s:
            row = s.scalar(
                sa.select(ApiKeyRow).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
            )
            if row is None:
                raise KeyNotFound(f"no active key named {name!r}", name=name)
            row.revoked_at = utcnow()
            row.revoked_by = actor
            _record(s, "key", "revoked", name, actor=actor, data=_key_data(row))
            return _key_info(row)

    def key_entries(self) -> list[KeyEntry]:
        """The active keys as services check them (digests included).

        A database that has no key table yet (not migrated by a registry so far) has no keys.
        """
        try:
            with self._transaction() as s:
                rows = s.scalars(sa.select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None)))
                return [KeyEntry(r.name, r.sha256, frozenset(r.scopes)) for r in rows.all()]
        except StoreUnavailable:
            if not sa.inspect(self.engine).has_table(ApiKeyRow.__tablename__):
                return []
            raise
        except sa.exc.ProgrammingError as exc:  # PostgreSQL: the table is not there
            if not sa.inspect(self.engine).has_table(ApiKeyRow.__tablename__):
                return []
            raise StoreUnavailable(f"registry database error: {exc.orig}") from exc

    def unpublished_events(self, *, limit: int = 500) -> list[tuple[str, HistoryEntry]]:
        """Changes not yet published on the bus, oldest first, with their event ids."""
        with self._transaction() as s:
            rows = s.scalars(
                sa.select(EventRow)
                .where(EventRow.published_at.is_(None))
                .order_by(EventRow.seq)
                .limit(limit)
            ).all()
            return [(r.event_id, _history(r)) for r in rows]

    def mark_published(self, event_ids: Sequence[str]) -> None:
        """Record that these events reached the bus."""
        if not event_ids:
            return
        with self._transaction() as s:
            s.execute(
                sa.update(EventRow)
                .where(EventRow.event_id.in_(list(event_ids)))
                .values(published_at=utcnow())
            )

    def referenced_artifacts(self) -> set[str]:
        """The sha256 of every artifact a version uses (archived ones too)."""
        with self._transaction() as s:
            return set(s.scalars(sa.select(VersionRow.artifact_sha256).distinct()).all())

    def is_artifact_referenced(self, sha256: str) -> bool:
        """Whether any version uses the artifact (so it must be kept)."""
        with self._transaction() as s:
            return (
                s.scalar(sa.select(VersionRow.id).where(VersionRow.artifact_sha256 == sha256))
                is not None
            )


# -- helpers, each used inside an open transaction ------------------------------------------

_MODEL_EVENTS = ("model", "version", "alias")
"""The event kinds of a model's own history (a record of another kind may share its name)."""


class _State:
    """The registry as a kind's validate hook sees it: read-only, inside the write's
    transaction (:class:`~aimesh.registry.kinds.RegistryState`)."""

    def __init__(self, s: Session) -> None:
        self._s = s

    def get_model(self, name: str) -> ModelInfo:
        return _model_info(self._s, _model_row(self._s, name))

    def get_version(self, name: str, ref: str | int) -> ModelVersion:
        return _version(self._s, name, _resolve(self._s, _model_row(self._s, name), ref))

    def list_aliases(self, name: str) -> list[Alias]:
        return _list_aliases(self._s, _model_row(self._s, name))

    def find_record(self, kind: RecordKind[S], name: str) -> Record[S] | None:
        return records.find(self._s, kind, name)


class _ActionState(_State):
    """The registry as a kind's action sees it: :class:`_State`, and alias moves made in
    the action's transaction (:class:`~aimesh.registry.kinds.ActionState`)."""

    def __init__(self, s: Session, actor: str) -> None:
        super().__init__(s)
        self._actor = actor

    def move_alias(self, name: str, alias: str, number: int) -> Alias:
        check_alias_name(alias)
        model = _model_row(self._s, name)
        return _move_alias(self._s, model, alias, _version_row(self._s, model, number), self._actor)


def _record(
    s: Session,
    kind: str,
    action: str,
    model: str,
    *,
    actor: str,
    version: int | None = None,
    alias: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    s.add(
        EventRow(
            event_id=uuid.uuid4().hex,
            kind=kind,
            action=action,
            model=model,
            version=version,
            alias=alias,
            actor=actor,
            at=utcnow(),
            data=data or {},
        )
    )


def _find_model(s: Session, name: str) -> ModelRow | None:
    check_model_name(name)
    return s.scalar(sa.select(ModelRow).where(ModelRow.name == name))


def _model_row(s: Session, name: str) -> ModelRow:
    row = _find_model(s, name)
    if row is None:
        raise ModelNotFound(f"no model named {name!r}", name=name)
    return row


def _version_row(s: Session, model: ModelRow, number: int) -> VersionRow:
    # A number no column holds is asked of no database (SQLite raises OverflowError).
    row = (
        s.scalar(
            sa.select(VersionRow).where(
                VersionRow.model_id == model.id, VersionRow.version == number
            )
        )
        if 1 <= number <= STORED_INT_MAX
        else None
    )
    if row is None:
        raise VersionNotFound(
            f"model {model.name!r} has no version {number}", model=model.name, version=number
        )
    return row


def _resolve(s: Session, model: ModelRow, ref: str | int) -> VersionRow:
    number = ref if isinstance(ref, int) else whole_number(ref)
    if number is not None:
        return _version_row(s, model, number)
    if ref == LATEST:
        row = s.scalar(
            sa.select(VersionRow)
            .where(VersionRow.model_id == model.id, VersionRow.archived.is_(False))
            .order_by(VersionRow.version.desc())
            .limit(1)
        )
        if row is None:
            raise VersionNotFound(f"model {model.name!r} has no versions", model=model.name)
        return row
    alias = s.get(AliasRow, (model.id, ref))
    if alias is None:
        raise AliasNotFound(f"model {model.name!r} has no alias {ref!r}", alias=ref)
    return s.get_one(VersionRow, alias.version_id)


def _move_alias(
    s: Session,
    model: ModelRow,
    alias: str,
    target: VersionRow,
    actor: str,
    data: dict[str, Any] | None = None,
) -> Alias:
    if target.archived:
        raise VersionArchived(
            f"{model.name}@{target.version} is archived; an alias cannot point at it",
            version=target.version,
        )
    now = utcnow()
    row = s.get(AliasRow, (model.id, alias), with_for_update=True)
    previous: int | None = None
    if row is None:
        row = AliasRow(
            model_id=model.id, name=alias, version_id=target.id, updated_at=now, updated_by=actor
        )
        s.add(row)
    else:
        previous = s.get_one(VersionRow, row.version_id).version
        row.version_id = target.id
        row.updated_at = now
        row.updated_by = actor
    s.flush()
    _record(
        s,
        "alias",
        "moved",
        model.name,
        version=target.version,
        alias=alias,
        actor=actor,
        data={"previous": previous, **(data or {})},
    )
    return _alias(model.name, row, target.version, previous=previous)


def _version_before(s: Session, model: str, alias: str) -> int | None:
    """The version an alias held before its newest move not undone by a rollback."""
    rows = s.execute(
        sa.select(EventRow.action, EventRow.version, EventRow.data)
        .where(EventRow.model == model, EventRow.kind == "alias", EventRow.alias == alias)
        .order_by(EventRow.seq.desc())
        .execution_options(yield_per=100)
    )
    undone = 0
    for action, version, data in rows:
        if action == "deleted":
            return None  # what came before a delete is another alias's story
        previous = data.get("previous")
        if data.get("rollback"):
            undone += 1
        elif previous == version:
            continue  # a move to where it was changes nothing to undo
        elif undone:
            undone -= 1
        else:
            return previous if isinstance(previous, int) else None
    return None


def _list_aliases(s: Session, model: ModelRow) -> list[Alias]:
    rows = s.execute(
        sa.select(AliasRow, VersionRow.version)
        .join(VersionRow, VersionRow.id == AliasRow.version_id)
        .where(AliasRow.model_id == model.id)
        .order_by(AliasRow.name)
    ).all()
    return [_alias(model.name, a, v) for a, v in rows]


def _aliases_by_model(s: Session, model_ids: list[int]) -> dict[int, dict[str, int]]:
    found: dict[int, dict[str, int]] = {}
    if not model_ids:
        return found
    rows = s.execute(
        sa.select(AliasRow.model_id, AliasRow.name, VersionRow.version)
        .join(VersionRow, VersionRow.id == AliasRow.version_id)
        .where(AliasRow.model_id.in_(model_ids))
        .order_by(AliasRow.name)
    ).all()
    for model_id, alias, version in rows:
        found.setdefault(model_id, {})[alias] = version
    return found


def _model_info(s: Session, row: ModelRow, aliases: dict[str, int] | None = None) -> ModelInfo:
    if aliases is None:
        aliases = _aliases_by_model(s, [row.id]).get(row.id, {})
    return ModelInfo(
        name=row.name,
        description=row.description,
        tags=row.tags,
        created_at=row.created_at,
        updated_at=row.updated_at,
        latest_version=row.latest_version or None,
        aliases=aliases,
    )


def _version(s: Session, model: str, row: VersionRow) -> ModelVersion:
    metrics = dict(
        s.execute(sa.select(MetricRow.key, MetricRow.value).where(MetricRow.version_id == row.id))
        .tuples()
        .all()
    )
    aliases = s.scalars(
        sa.select(AliasRow.name).where(AliasRow.version_id == row.id).order_by(AliasRow.name)
    ).all()
    return ModelVersion(
        model=model,
        version=row.version,
        framework=row.framework,
        artifact_sha256=row.artifact_sha256,
        artifact_size=row.artifact_size,
        signature=Signature.model_validate(row.signature) if row.signature else None,
        metrics=metrics,
        lineage=Lineage.model_validate(row.lineage),
        description=row.description,
        tags=row.tags,
        trusted=row.trusted,
        trusted_types=list(row.trusted_types),
        trusted_by=row.trusted_by,
        archived=row.archived,
        created_at=row.created_at,
        created_by=row.created_by,
        aliases=list(aliases),
    )


def _alias(model: str, row: AliasRow, version: int, *, previous: int | None = None) -> Alias:
    return Alias(
        model=model,
        name=row.name,
        version=version,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        previous=previous,
    )


def _key_info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        name=row.name,
        scopes=list(row.scopes),
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


def _key_data(row: ApiKeyRow) -> dict[str, Any]:
    # What a key's event says of it: never its digest.
    return {"scopes": ",".join(row.scopes)}


def _history(row: EventRow) -> HistoryEntry:
    at: datetime = row.at
    return HistoryEntry(
        seq=row.seq,
        kind=row.kind,
        action=row.action,
        model=row.model,
        version=row.version,
        alias=row.alias,
        actor=row.actor,
        at=at,
        data=row.data,
    )


__all__ = ["RegistryStore", "SQLAlchemyError", "create_engine"]

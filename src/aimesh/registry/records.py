"""Records of every kind in SQL: the operations of :mod:`aimesh.registry.kinds`, once.

Each function runs inside a transaction the store opened (``store.py``), which also writes
the change's event row: a record, its revision and its event commit together or not at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aimesh.errors import RecordConflict, RecordExists, RecordNotFound
from aimesh.registry.kinds import (
    ActionState,
    Expect,
    Record,
    RecordAction,
    RecordKind,
    RecordRevision,
    RecordWrite,
    S,
    registered,
)
from aimesh.registry.tables import RecordRevisionRow, RecordRow, utcnow

__all__ = ["delete", "find", "get", "history", "listing", "write"]


def write(
    s: Session,
    kind: RecordKind[S],
    name: str,
    spec: S,
    *,
    expect: Expect,
    actor: str,
    state: ActionState,
) -> tuple[Record[S], RecordAction]:
    """Create or replace a record as ``expect`` allows, after the kind's validate hook.

    Returns the record as it now is, and whether it was ``created`` or ``updated``.
    """
    registered(kind).check_name(name)
    stored = kind.dump(spec)
    row = _row(s, kind, name, lock=True)
    _check(kind, name, row, expect)
    current = None if row is None else _record(kind, row)
    if kind.validate is not None:
        kind.validate(RecordWrite(name=name, spec=spec, current=current, state=state))
    now = utcnow()
    action: RecordAction
    if row is None:
        action = "created"
        last = s.scalar(
            sa.select(sa.func.max(RecordRevisionRow.revision)).where(
                RecordRevisionRow.kind == kind.name, RecordRevisionRow.name == name
            )
        )
        row = RecordRow(
            kind=kind.name,
            name=name,
            revision=(last or 0) + 1,
            spec=stored,
            created_at=now,
            created_by=actor,
            updated_at=now,
            updated_by=actor,
        )
        s.add(row)
    else:
        action = "updated"
        row.revision += 1
        row.spec = stored
        row.updated_at = now
        row.updated_by = actor
    _revision(s, kind, name, row.revision, action, stored, now, actor)
    s.flush()
    return _record(kind, row), action


def delete(s: Session, kind: RecordKind[Any], name: str, *, expect: int | None, actor: str) -> int:
    """Delete a record (at revision ``expect``, if given); the revision of the delete."""
    registered(kind).check_name(name)
    row = _row(s, kind, name, lock=True)
    _check(kind, name, row, "present" if expect is None else expect)
    assert row is not None  # _check refused an absent record
    revision = row.revision + 1
    s.delete(row)
    _revision(s, kind, name, revision, "deleted", None, utcnow(), actor)
    s.flush()
    return revision


def find(s: Session, kind: RecordKind[S], name: str) -> Record[S] | None:
    """A record, or None."""
    registered(kind).check_name(name)
    row = _row(s, kind, name, lock=False)
    return None if row is None else _record(kind, row)


def get(s: Session, kind: RecordKind[S], name: str) -> Record[S]:
    """A record, or :class:`RecordNotFound`."""
    found = find(s, kind, name)
    if found is None:
        raise RecordNotFound(kind.name, name)
    return found


def listing(s: Session, kind: RecordKind[S], *, limit: int, after: str | None) -> list[Record[S]]:
    """Up to ``limit`` records by name, after the name ``after`` (the last of a page)."""
    query = sa.select(RecordRow).where(RecordRow.kind == registered(kind).name)
    if after is not None:
        query = query.where(RecordRow.name > kind.check_name(after))
    rows = s.scalars(query.order_by(RecordRow.name).limit(limit)).all()
    return [_record(kind, r) for r in rows]


def history(s: Session, kind: RecordKind[S], name: str, *, limit: int) -> list[RecordRevision[S]]:
    """A record's newest revisions, newest first, deletes included (kept after a delete)."""
    registered(kind).check_name(name)
    rows = s.scalars(
        sa.select(RecordRevisionRow)
        .where(RecordRevisionRow.kind == kind.name, RecordRevisionRow.name == name)
        .order_by(RecordRevisionRow.revision.desc())
        .limit(limit)
    ).all()
    if not rows:
        raise RecordNotFound(kind.name, name)
    return [
        kind.revision(
            name=r.name, revision=r.revision, action=r.action, spec=r.spec, at=r.at, actor=r.actor
        )
        for r in rows
    ]


def _row(s: Session, kind: RecordKind[Any], name: str, *, lock: bool) -> RecordRow | None:
    return s.get(RecordRow, (kind.name, name), with_for_update=lock)


def _check(kind: RecordKind[Any], name: str, row: RecordRow | None, expect: Expect) -> None:
    if expect == "absent":
        if row is not None:
            raise RecordExists(kind.name, name, row.revision)
        return
    if expect is None:
        return
    if row is None:
        raise RecordNotFound(kind.name, name)
    if isinstance(expect, int) and row.revision != expect:
        raise RecordConflict(kind.name, name, expect, row.revision)


def _revision(
    s: Session,
    kind: RecordKind[Any],
    name: str,
    revision: int,
    action: RecordAction,
    spec: dict[str, Any] | None,
    at: datetime,
    actor: str,
) -> None:
    s.add(
        RecordRevisionRow(
            kind=kind.name,
            name=name,
            revision=revision,
            action=action,
            spec=spec,
            at=at,
            actor=actor,
        )
    )


def _record(kind: RecordKind[S], row: RecordRow) -> Record[S]:
    return kind.record(
        name=row.name,
        revision=row.revision,
        spec=row.spec,
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )

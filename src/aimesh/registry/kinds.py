"""Record kinds: one definition gives a kind of registry record everything it needs.

Traffic policies, pipelines and stream processors are each a *kind* of named, revisioned
record in the registry. A kind is declared once, as a :class:`RecordKind` passed to
:func:`register_kind`; from that one definition come, with no code of its own:

- storage: its records in the ``records`` table and every revision in ``record_revisions``
  (spec as JSON, who and when), with a revision number that only grows, kept across a
  delete and a re-create;
- an event per change, written in the same transaction and published by the outbox:
  :class:`~aimesh.bus.RegistryEvent` with ``kind`` the kind's name, ``action`` ``created``,
  ``updated`` or ``deleted``, ``model`` the record's name and ``data`` ``{"revision": N}``,
  on ``aimesh.events.registry.<kind>.<action>.<name>``;
- the :class:`~aimesh.registry.Registry` methods (``create_record``, ``replace_record``,
  ``put_record``, ``get_record``, ``list_records``, ``record_history``,
  ``delete_record``), for the local store and the HTTP client alike;
- REST routes under ``/api/<plural>`` (list, get, PUT, DELETE, history) with the spec's
  schema in the OpenAPI document, served by the registry and routed there by gateways.

A process knows the kinds registered in it: a kind every service needs is registered by a
module that ``aimesh.registry`` imports, so that the registry service, its clients and the
gateways agree. Tests register kinds of their own (:func:`unregister_kind` undoes it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from aimesh.bus import EVENT_KIND
from aimesh.errors import InvalidName, InvalidRequest, KindNotFound, foreign_message
from aimesh.protocol import MODEL_NAME
from aimesh.registry.types import Alias, ModelInfo, ModelVersion

__all__ = [
    "KIND_NAME",
    "ActionCall",
    "ActionState",
    "Expect",
    "Record",
    "RecordAction",
    "RecordActionFn",
    "RecordKind",
    "RecordRevision",
    "RecordWrite",
    "RegistryState",
    "record_kind",
    "record_kinds",
    "register_kind",
    "registered",
    "unregister_kind",
]

S = TypeVar("S", bound=BaseModel)
T = TypeVar("T", bound=BaseModel)

KIND_NAME = EVENT_KIND
"""A kind's name: its events' ``kind`` (a subject token), at most 32 characters."""
_PLURAL = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# What cannot split a subject or act as a wildcard in one: a record's name is a token.
_NOT_IN_TOKEN = re.compile(r"[\s.*>]")
_NAME_LIMIT = 128  # the width of the name columns
RESERVED_KINDS = frozenset({"model", "version", "alias", "key"})
"""The registry's own event kinds: no record kind may take one."""
RESERVED_PLURALS = frozenset({"registry", "lake", "jobs"})
"""The services gateways route ``/api/<name>`` to: no kind's routes may sit there."""

RecordAction = Literal["created", "updated", "deleted"]
"""What a revision did to its record; also the action of its event."""

Expect = int | Literal["absent", "present"] | None
"""What a write expects to find: ``absent`` (create), ``present`` (replace), a revision
(replace at exactly that revision), or None (create or replace)."""


class Record(BaseModel, Generic[S]):
    """A record of some kind, at its current revision."""

    model_config = ConfigDict(frozen=True)

    kind: str
    name: str
    revision: int = Field(description="Grows by one with every change, across deletes.")
    spec: S
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


class RecordRevision(BaseModel, Generic[S]):
    """One change of a record: what it became (no spec for a delete), who, when."""

    model_config = ConfigDict(frozen=True)

    kind: str
    name: str
    revision: int
    action: RecordAction
    spec: S | None
    at: datetime
    actor: str


class RegistryState(Protocol):
    """The registry as a kind's validate hook sees it: inside the write's transaction.

    What it answers cannot change before the write commits; its errors (``ModelNotFound``,
    ``VersionNotFound``, ``AliasNotFound``...) refuse the write.
    """

    def get_model(self, name: str) -> ModelInfo:
        """A model, or ``ModelNotFound``."""
        ...

    def get_version(self, name: str, ref: str | int) -> ModelVersion:
        """A version by number, alias or ``latest``, or the error naming what is missing."""
        ...

    def list_aliases(self, name: str) -> list[Alias]:
        """A model's aliases."""
        ...

    def find_record(self, kind: RecordKind[T], name: str) -> Record[T] | None:
        """A record of any registered kind, or None."""
        ...


class ActionState(RegistryState, Protocol):
    """The registry as a kind's hooks see it inside a write's transaction: read it, and
    make the changes the record's own change implies (a canary entering ``promoted`` moves
    its alias): both are written, or neither."""

    def move_alias(self, name: str, alias: str, number: int) -> Alias:
        """Point ``alias`` of model ``name`` at version ``number`` (recorded, published)."""
        ...


@dataclass(frozen=True)
class RecordWrite(Generic[S]):
    """What a kind's validate hook is shown of one create or replace."""

    name: str
    spec: S
    current: Record[S] | None
    """The record as it is before this write (None: it is being created)."""
    state: ActionState


@dataclass(frozen=True)
class ActionCall(Generic[S]):
    """What a kind's action is shown: the record as it is, who acts, when."""

    record: Record[S]
    actor: str
    now: datetime
    state: ActionState


RecordActionFn = Callable[[ActionCall[S]], S]
"""A named change of a record: the spec it becomes (raise an AimeshError to refuse)."""


@dataclass(frozen=True, eq=False)
class RecordKind(Generic[S]):
    """The one definition of a kind of registry record.

    ``spec`` is the pydantic model of a record's content (``extra="forbid"`` recommended);
    it must keep reading every spec it ever stored (new fields need defaults).
    ``validate``, when given, runs inside the write's transaction, after the name, the spec
    and the expected revision were checked and before anything is written; it raises an
    :class:`~aimesh.errors.AimeshError` to refuse the write (nothing is then written), and
    may make the changes the write implies through its state (``move_alias``), which
    commit with it or not at all.
    """

    name: str
    """The kind's name (``rollout``): its events' ``kind``; lowercase, a subject token."""
    plural: str
    """Its routes' segment: ``/api/<plural>`` (``rollouts``)."""
    spec: type[S]
    description: str = ""
    """What a record of this kind is; shown in the OpenAPI document."""
    write_scope: Literal["write", "admin"] = "write"
    """The scope creating, replacing and deleting needs (reading needs ``read``)."""
    name_pattern: re.Pattern[str] = MODEL_NAME
    """What a record's name must fully match (besides being a subject token)."""
    name_rule: str = "1-128 letters, digits, '-' or '_', starting with a letter or digit"
    """The pattern in words, for the error that refuses a name."""
    validate: Callable[[RecordWrite[S]], None] | None = None
    write_errors: tuple[int, ...] = ()
    """HTTP statuses ``validate`` may answer beyond 400, 404 and 409, for the document."""
    actions: dict[str, RecordActionFn[S]] = field(default_factory=dict)
    """Named changes (``pause``, ``promote``...): ``POST /api/<plural>/{name}/actions/{action}``
    and :meth:`~aimesh.registry.Registry.act_on_record`, each run on the record as it is,
    in one transaction with the write (and the validate hook) it makes."""
    record_type: type[Record[S]] = field(init=False, repr=False)
    """``Record[spec]`` under the kind's own schema name (``RolloutRecord``)."""
    revision_type: type[RecordRevision[S]] = field(init=False, repr=False)
    """``RecordRevision[spec]`` under the kind's own schema name (``RolloutRevision``)."""

    def __post_init__(self) -> None:
        if not KIND_NAME.fullmatch(self.name) or self.name in RESERVED_KINDS:
            raise ValueError(
                f"invalid kind name {self.name!r}: 1-32 lowercase letters, digits or '_', "
                f"starting with a letter, none of {sorted(RESERVED_KINDS)}"
            )
        if not _PLURAL.fullmatch(self.plural) or self.plural in RESERVED_PLURALS:
            raise ValueError(
                f"invalid plural {self.plural!r}: lowercase letters, digits, '-' or '_', "
                f"none of {sorted(RESERVED_PLURALS)}"
            )
        title = "".join(part.capitalize() for part in self.name.split("_"))
        generic_record = cast(Any, Record)[self.spec]
        generic_revision = cast(Any, RecordRevision)[self.spec]
        record = create_model(f"{title}Record", __base__=generic_record)
        revision = create_model(f"{title}Revision", __base__=generic_revision)
        object.__setattr__(self, "record_type", record)
        object.__setattr__(self, "revision_type", revision)

    def check_name(self, name: str) -> str:
        """Return ``name`` if a record of this kind may have it, else raise InvalidName."""
        if (
            len(name) > _NAME_LIMIT
            or _NOT_IN_TOKEN.search(name)
            or not self.name_pattern.fullmatch(name)
        ):
            raise InvalidName(f"invalid {self.name} name {name!r}: use {self.name_rule}", name=name)
        return name

    def dump(self, spec: S) -> dict[str, Any]:
        """``spec`` as the JSON object stored, refused when it would not read back the same.

        (A float that JSON cannot carry, NaN or infinity, is written as ``null``: such a
        spec is refused here rather than stored unreadable.)
        """
        if not isinstance(spec, self.spec):
            raise InvalidRequest(f"a {self.name} spec must be a {self.spec.__name__}")
        stored: dict[str, Any] = json.loads(spec.model_dump_json())
        try:
            again = self.spec.model_validate(stored)
        except ValidationError as exc:
            raise InvalidRequest(
                f"this {self.name} spec cannot be stored as JSON: {foreign_message(exc)}"
            ) from exc
        if again != spec:
            raise InvalidRequest(f"this {self.name} spec does not read back as it was sent")
        return stored

    def load(self, stored: dict[str, Any]) -> S:
        """A stored spec, read back."""
        return self.spec.model_validate(stored)

    def record(self, **fields: Any) -> Record[S]:
        """A record of this kind (``spec`` as stored JSON)."""
        return self.record_type(kind=self.name, **{**fields, "spec": self.load(fields["spec"])})

    def revision(self, **fields: Any) -> RecordRevision[S]:
        """A revision of this kind (``spec`` as stored JSON, or None)."""
        spec = fields["spec"]
        loaded = None if spec is None else self.load(spec)
        return self.revision_type(kind=self.name, **{**fields, "spec": loaded})


_KINDS: dict[str, RecordKind[Any]] = {}


def register_kind(kind: RecordKind[S]) -> RecordKind[S]:
    """Make ``kind`` known to this process (its registry routes, store and client calls).

    Registering the same definition again changes nothing; another definition of a name
    or plural already taken is refused (``ValueError``: a programming error).
    """
    known = _KINDS.get(kind.name)
    if known is kind:
        return kind
    if known is not None:
        raise ValueError(f"a record kind named {kind.name!r} is registered already")
    if any(k.plural == kind.plural for k in _KINDS.values()):
        raise ValueError(f"a record kind answers /api/{kind.plural} already")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(kind: RecordKind[Any]) -> None:
    """Forget ``kind`` (tests); its stored records stay in the database."""
    if _KINDS.get(kind.name) is kind:
        del _KINDS[kind.name]


def record_kinds() -> tuple[RecordKind[Any], ...]:
    """Every registered kind, by name."""
    return tuple(_KINDS[name] for name in sorted(_KINDS))


def record_kind(name: str) -> RecordKind[Any]:
    """The registered kind called ``name``, or :class:`KindNotFound`."""
    found = _KINDS.get(name)
    if found is None:
        raise KindNotFound(name)
    return found


def registered(kind: RecordKind[S]) -> RecordKind[S]:
    """``kind`` itself if it is the registered definition of its name, else KindNotFound."""
    if _KINDS.get(kind.name) is not kind:
        raise KindNotFound(kind.name)
    return kind

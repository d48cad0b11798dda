"""Records of a kind defined only in tests, in the registry's SQL store (SQLite and
PostgreSQL): revisions, optimistic concurrency, history, the validate hook, events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _kinds import GADGET, WIDGET, WidgetSpec, kinds_registered
from alembic import command

from _bad_paths import BAD_NAMES
from aimesh.bus import RegistryEvent, connect, declare_topology, subscribe_events
from aimesh.errors import (
    AimeshError,
    InvalidName,
    InvalidRequest,
    KindNotFound,
    ModelNotFound,
    RecordConflict,
    RecordExists,
    RecordNotFound,
    VersionNotFound,
)
from aimesh.registry import (
    ModelCreate,
    RecordKind,
    RegistryStore,
    VersionCreate,
    record_kind,
    record_kinds,
    register_kind,
)
from aimesh.registry.migrate import alembic_config, current_revision, head_revision
from aimesh.registry.outbox import publish_pending, to_event
from aimesh.registry.store import create_engine

SPEC = WidgetSpec(model="fraud", version=1, weight=10.0)
TOKEN_BREAKERS = ["a.b", "a*", "a>", "a b", ""]


@pytest.fixture(autouse=True)
def _kinds() -> Iterator[None]:
    with kinds_registered():
        yield


@pytest.fixture
def fraud(store: RegistryStore) -> RegistryStore:
    """The store with model ``fraud`` at versions 1 and 2."""
    store.create_model(ModelCreate(name="fraud"), "t")
    for _ in range(2):
        spec = VersionCreate(artifact_sha256="a" * 64, framework="sklearn")
        store.create_version("fraud", spec, size=1, signature=None, actor="t")
    return store


def _create(store: RegistryStore, name: str = "w1", spec: WidgetSpec = SPEC) -> int:
    return store.write_record(WIDGET, name, spec, "ann", expect="absent")[0].revision


def _unchanged(store: RegistryStore) -> Callable[[], None]:
    """A check that nothing was written since it was made: records, revisions, events."""
    before = (_everything(store), len(store.unpublished_events()))

    def check() -> None:
        assert (_everything(store), len(store.unpublished_events())) == before

    return check


def _everything(store: RegistryStore) -> list[Any]:
    found: list[Any] = []
    for kind in (WIDGET, GADGET):
        for record in store.list_records(kind, limit=1000):
            found.append(record)
            found.extend(store.record_history(kind, record.name))
    return found


def test_migration_0004_adds_the_record_tables_to_an_older_database(database_url: str) -> None:
    engine = create_engine(database_url)
    tables = {"records", "record_revisions"}
    try:
        with engine.begin() as c:
            command.upgrade(alembic_config(c), "0003")
        assert not tables & set(sa.inspect(engine).get_table_names())
        store = RegistryStore.open(database_url)
        store.create_model(ModelCreate(name="fraud"), "t")
        assert store.write_record(WIDGET, "w1", WidgetSpec(model="fraud"), "t", expect=None)
        store.close()
        with engine.connect() as c:
            assert current_revision(c) == head_revision() == "0004_records"
        with engine.begin() as c:
            command.downgrade(alembic_config(c), "0003")
        assert not tables & set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_record_is_created_read_listed_and_announced(fraud: RegistryStore) -> None:
    record, created = fraud.write_record(WIDGET, "w1", SPEC, "ann", expect="absent")
    assert created and record.revision == 1 and record.spec == SPEC
    assert (record.kind, record.name, record.created_by, record.updated_by) == (
        "widget",
        "w1",
        "ann",
        "ann",
    )
    assert record.created_at.tzinfo is not None
    assert fraud.get_record(WIDGET, "w1") == record
    assert fraud.list_records(WIDGET) == [record]
    assert fraud.list_records(GADGET) == []
    event_id, entry = fraud.unpublished_events()[-1]
    event = to_event(event_id, entry)
    assert (event.kind, event.action, event.model, event.data) == (
        "widget",
        "created",
        "w1",
        {"revision": 1},
    )
    assert event.subject() == "aimesh.events.registry.widget.created.w1"
    # A record named like a model stays out of the model's history.
    fraud.write_record(WIDGET, "fraud", SPEC, "ann", expect="absent")
    assert {e.kind for e in fraud.history("fraud")} == {"model", "version"}


def test_replace_checks_the_revision_and_history_keeps_every_one(fraud: RegistryStore) -> None:
    _create(fraud)
    heavier = SPEC.model_copy(update={"weight": 50.0})
    replaced, created = fraud.write_record(WIDGET, "w1", heavier, "bob", expect=1)
    assert not created and replaced.revision == 2 and replaced.spec.weight == 50.0
    assert (replaced.created_by, replaced.updated_by) == ("ann", "bob")
    check = _unchanged(fraud)
    with pytest.raises(RecordConflict) as refused:
        fraud.write_record(WIDGET, "w1", SPEC, "eve", expect=1)  # read before bob's change
    assert (refused.value.expected, refused.value.revision) == (1, 2)
    check()
    latest, _ = fraud.write_record(WIDGET, "w1", SPEC, "bob", expect="present")
    assert latest.revision == 3
    history = fraud.record_history(WIDGET, "w1")
    assert [(h.revision, h.action, h.actor) for h in history] == [
        (3, "updated", "bob"),
        (2, "updated", "bob"),
        (1, "created", "ann"),
    ]
    assert history[1].spec == heavier and history[2].spec == SPEC
    assert [h.revision for h in fraud.record_history(WIDGET, "w1", limit=2)] == [3, 2]


def test_revisions_go_on_across_delete_and_re_create(fraud: RegistryStore) -> None:
    _create(fraud)
    fraud.write_record(WIDGET, "w1", SPEC, "ann", expect=None)  # 2
    with pytest.raises(RecordConflict):
        fraud.delete_record(WIDGET, "w1", "ann", revision=1)
    assert fraud.delete_record(WIDGET, "w1", "ann", revision=2) == 3
    with pytest.raises(RecordNotFound):
        fraud.get_record(WIDGET, "w1")
    assert fraud.list_records(WIDGET) == []
    deleted = fraud.record_history(WIDGET, "w1")[0]
    assert (deleted.revision, deleted.action, deleted.spec) == (3, "deleted", None)
    with pytest.raises(RecordNotFound):
        fraud.delete_record(WIDGET, "w1", "ann")
    with pytest.raises(RecordNotFound):
        fraud.write_record(WIDGET, "w1", SPEC, "ann", expect="present")
    again, created = fraud.write_record(WIDGET, "w1", SPEC, "cy", expect=None)
    assert created and again.revision == 4 and again.created_by == "cy"
    events = [(e.kind, e.action, e.data) for _, e in fraud.unpublished_events()]
    assert events[-4:] == [
        ("widget", "created", {"revision": 1}),
        ("widget", "updated", {"revision": 2}),
        ("widget", "deleted", {"revision": 3}),
        ("widget", "created", {"revision": 4}),
    ]


def test_create_refuses_an_existing_record_and_keeps_it(fraud: RegistryStore) -> None:
    _create(fraud)
    check = _unchanged(fraud)
    with pytest.raises(RecordExists) as refused:
        _create(fraud, spec=SPEC.model_copy(update={"weight": 0.0}))
    assert refused.value.revision == 1
    check()
    assert fraud.get_record(WIDGET, "w1").spec == SPEC


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (WidgetSpec(model="ghost"), ModelNotFound),
        (WidgetSpec(model="fraud", version=9), VersionNotFound),
    ],
)
def test_the_validate_hook_sees_the_registry_and_refuses(
    fraud: RegistryStore, spec: WidgetSpec, error: type[AimeshError]
) -> None:
    check = _unchanged(fraud)
    with pytest.raises(error):
        fraud.write_record(WIDGET, "w1", spec, "ann", expect=None)
    check()


def test_the_validate_hook_is_shown_the_current_record(fraud: RegistryStore) -> None:
    _create(fraud)
    fraud.create_model(ModelCreate(name="churn"), "t")
    check = _unchanged(fraud)
    with pytest.raises(InvalidRequest, match="cannot change"):
        fraud.write_record(WIDGET, "w1", WidgetSpec(model="churn"), "ann", expect=None)
    check()


@pytest.mark.parametrize("name", [*BAD_NAMES, *TOKEN_BREAKERS, "x" * 129])
def test_bad_names_are_refused_by_every_operation(fraud: RegistryStore, name: str) -> None:
    check = _unchanged(fraud)
    calls: list[Callable[[], object]] = [
        lambda: fraud.write_record(WIDGET, name, SPEC, "ann", expect=None),
        lambda: fraud.write_record(WIDGET, name, SPEC, "ann", expect="absent"),
        lambda: fraud.get_record(WIDGET, name),
        lambda: fraud.record_history(WIDGET, name),
        lambda: fraud.delete_record(WIDGET, name, "ann"),
        lambda: fraud.list_records(WIDGET, after=name),
    ]
    for call in calls:
        with pytest.raises(InvalidName):
            call()
    check()


def test_a_kind_checks_names_by_its_own_rule(fraud: RegistryStore) -> None:
    with pytest.raises(InvalidName, match="1-16 lowercase letters"):
        fraud.write_record(GADGET, "Upper", SPEC, "ann", expect=None)
    assert fraud.write_record(GADGET, "lower", SPEC, "ann", expect=None)[0].revision == 1


def test_an_unregistered_kind_is_refused(fraud: RegistryStore) -> None:
    stranger = RecordKind(name="stranger", plural="strangers", spec=WidgetSpec)
    impostor = RecordKind(name="widget", plural="widgets", spec=WidgetSpec)  # not the one
    check = _unchanged(fraud)
    for kind in (stranger, impostor):
        with pytest.raises(KindNotFound):
            fraud.write_record(kind, "w1", SPEC, "ann", expect=None)
        with pytest.raises(KindNotFound):
            fraud.list_records(kind)
    with pytest.raises(KindNotFound):
        record_kind("stranger")
    check()


def test_kind_definitions_are_checked_once_at_registration() -> None:
    assert [k.name for k in record_kinds()] == ["gadget", "rollout", "widget"]
    assert register_kind(WIDGET) is WIDGET  # again: no change
    with pytest.raises(ValueError, match="registered already"):
        register_kind(RecordKind(name="widget", plural="others", spec=WidgetSpec))
    with pytest.raises(ValueError, match="already"):
        register_kind(RecordKind(name="other", plural="widgets", spec=WidgetSpec))
    for name, plural in [("model", "m"), ("Bad", "bads"), ("a.b", "ab"), ("x", "jobs")]:
        with pytest.raises(ValueError):
            RecordKind(name=name, plural=plural, spec=WidgetSpec)


def test_a_spec_that_json_cannot_carry_is_refused(fraud: RegistryStore) -> None:
    check = _unchanged(fraud)
    broken = WidgetSpec.model_construct(model="fraud", version=None, weight=float("nan"))
    with pytest.raises(InvalidRequest, match="cannot be stored"):
        fraud.write_record(WIDGET, "w1", broken, "ann", expect=None)
    check()


def test_listing_is_bounded_and_pages_by_name(fraud: RegistryStore) -> None:
    for name in ("c", "a", "e", "b", "d"):
        _create(fraud, name)
    assert [r.name for r in fraud.list_records(WIDGET, limit=2)] == ["a", "b"]
    assert [r.name for r in fraud.list_records(WIDGET, limit=2, after="b")] == ["c", "d"]
    assert [r.name for r in fraud.list_records(WIDGET, after="d")] == ["e"]


def test_concurrent_writers_at_one_revision_one_wins(
    fraud: RegistryStore, database_url: str
) -> None:
    # Two stores on two engines behave like two processes sharing one database.
    other = RegistryStore.open(database_url)
    outcomes: list[object] = []
    lock = threading.Lock()

    def race(write: Callable[[RegistryStore, int], object]) -> list[object]:
        outcomes.clear()

        def one(store: RegistryStore, i: int) -> None:
            try:
                result: object = write(store, i)
            except (RecordConflict, RecordExists) as exc:
                result = exc
            with lock:
                outcomes.append(result)

        threads = [
            threading.Thread(target=one, args=(store, i))
            for i, store in enumerate((fraud, other) * 4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return list(outcomes)

    try:
        created = race(lambda s, i: s.write_record(WIDGET, "w1", SPEC, f"w{i}", expect="absent"))
        assert sum(not isinstance(o, AimeshError) for o in created) == 1
        assert all(isinstance(o, RecordExists) or not isinstance(o, Exception) for o in created)

        def replace(s: RegistryStore, i: int) -> object:
            spec = SPEC.model_copy(update={"weight": float(i)})
            return s.write_record(WIDGET, "w1", spec, f"w{i}", expect=1)

        replaced = race(replace)
        winners = [o for o in replaced if not isinstance(o, AimeshError)]
        assert len(winners) == 1
        assert all(isinstance(o, RecordConflict) for o in replaced if o not in winners)
        assert fraud.get_record(WIDGET, "w1").revision == 2
        assert [h.revision for h in fraud.record_history(WIDGET, "w1")] == [2, 1]
    finally:
        other.close()


def test_record_events_reach_the_bus(fraud: RegistryStore, nats_url: str) -> None:
    _create(fraud)
    fraud.delete_record(WIDGET, "w1", "ann")

    async def main() -> list[RegistryEvent]:
        async with await connect(nats_url, timeout=5, name="test-records") as bus:
            await declare_topology(bus)
            subject = "aimesh.events.registry.widget.*.w1"
            async with await subscribe_events(bus, subject) as events:
                await publish_pending(fraud, bus)
                seen: list[RegistryEvent] = []
                async for event in events:
                    seen.append(event)
                    if len(seen) == 2:
                        return seen
        return []

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    assert [(e.kind, e.action, e.model, e.data) for e in seen] == [
        ("widget", "created", "w1", {"revision": 1}),
        ("widget", "deleted", "w1", {"revision": 2}),
    ]

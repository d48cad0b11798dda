"""The registry's SQL store, on SQLite and on PostgreSQL: one suite, both backends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from aimesh.errors import (
    AliasMoved,
    AliasNotFound,
    InvalidName,
    MetricExists,
    ModelExists,
    ModelNotFound,
    NoPreviousVersion,
    VersionArchived,
    VersionNotFound,
)
from aimesh.registry import ModelCreate, ModelUpdate, RegistryStore, VersionCreate
from aimesh.registry.migrate import current_revision, head_revision

SHA = "a" * 64


def _spec(**kw: object) -> VersionCreate:
    return VersionCreate.model_validate({"artifact_sha256": SHA, "framework": "sklearn", **kw})


def _push(store: RegistryStore, name: str = "fraud", **kw: object) -> int:
    return store.create_version(name, _spec(**kw), size=10, signature=None, actor="t").version


def test_migrations_bring_an_empty_database_to_head(database_url: str) -> None:
    store = RegistryStore.open(database_url)
    try:
        with store.engine.connect() as c:
            assert current_revision(c) == head_revision()
            tables = set(sa.inspect(c).get_table_names())
        assert {
            "models",
            "model_versions",
            "aliases",
            "version_metrics",
            "registry_events",
        } <= tables
        RegistryStore.open(database_url).close()  # opening again is a no-op
    finally:
        store.close()


def test_the_migrations_make_the_tables_the_code_declares(store: RegistryStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from aimesh.registry.tables import Base

    with store.engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
        assert {"records", "record_revisions"} <= set(sa.inspect(c).get_table_names())


def test_versions_are_numbered_per_model(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    store.create_model(ModelCreate(name="churn"), "t")
    assert [_push(store, "fraud") for _ in range(3)] == [1, 2, 3]
    assert _push(store, "churn") == 1
    assert store.get_model("fraud").latest_version == 3
    assert [v.version for v in store.list_versions("fraud")] == [1, 2, 3]


def test_version_keeps_what_it_was_created_with(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud", description="d", tags={"team": "risk"}), "t")
    spec = _spec(
        metrics={"auc": 0.9},
        lineage={"dataset": "tx@3", "params": {"C": 1.0}, "extra": {"note": "x"}},
        tags={"k": "v"},
        trusted_types=["mymod.Thing"],
    )
    v = store.create_version("fraud", spec, size=123, signature=None, actor="alice@host")
    again = store.get_version("fraud", 1)
    assert again == v
    assert again.metrics == {"auc": 0.9}
    assert again.lineage.dataset == "tx@3" and again.lineage.params == {"C": 1.0}
    assert again.created_by == "alice@host" and again.artifact_size == 123
    assert again.created_at.tzinfo is not None


def test_concurrent_pushes_get_distinct_numbers(store: RegistryStore, database_url: str) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    # Two stores on two engines behave like two processes sharing one database.
    other = RegistryStore.open(database_url)
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def pusher(s: RegistryStore) -> None:
        try:
            for _ in range(5):
                n = _push(s)
                with lock:
                    numbers.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(s,)) for s in (store, other) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert not errors
    assert sorted(numbers) == list(range(1, 41))


def test_duplicate_model_is_refused_and_the_first_kept(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud", description="first"), "t")
    with pytest.raises(ModelExists):
        store.create_model(ModelCreate(name="fraud", description="second"), "t")
    assert store.get_model("fraud").description == "first"
    assert len(store.list_models()) == 1


def test_unknown_names_give_clear_errors(store: RegistryStore) -> None:
    with pytest.raises(ModelNotFound, match="nope"):
        store.get_model("nope")
    store.create_model(ModelCreate(name="fraud"), "t")
    _push(store)
    with pytest.raises(VersionNotFound):
        store.get_version("fraud", 9)
    with pytest.raises(AliasNotFound):
        store.get_version("fraud", "champion")
    with pytest.raises(VersionNotFound):
        store.set_alias("fraud", "champion", 9, "t")
    with pytest.raises(InvalidName):
        store.set_alias("fraud", "bad alias!", 1, "t")
    with pytest.raises(ModelNotFound):
        _push(store, "ghost")
    assert store.list_aliases("fraud") == []


def test_alias_moves_atomically_and_records_who(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    _push(store)
    _push(store)
    store.set_alias("fraud", "champion", 1, "alice")
    moved = store.set_alias("fraud", "champion", 2, "bob")
    assert moved.version == 2 and moved.updated_by == "bob"
    assert store.get_version("fraud", "champion").version == 2
    assert store.get_model("fraud").aliases == {"champion": 2}
    moves = [h for h in store.history("fraud") if h.kind == "alias"]
    assert [(h.actor, h.version, h.data.get("previous")) for h in moves] == [
        ("bob", 2, 1),
        ("alice", 1, None),
    ]
    # A failed move changes nothing.
    with pytest.raises(VersionNotFound):
        store.set_alias("fraud", "champion", 7, "eve")
    assert store.get_version("fraud", "champion").version == 2


def _three_moves(store: RegistryStore) -> None:
    """fraud at versions 1-4; champion moved to 1, then 2, then 3."""
    store.create_model(ModelCreate(name="fraud"), "t")
    for _ in range(4):
        _push(store)
    for number in (1, 2, 3):
        store.set_alias("fraud", "champion", number, "ann")


def test_rollback_walks_the_alias_back_one_move_at_a_time(store: RegistryStore) -> None:
    _three_moves(store)
    back = store.rollback_alias("fraud", "champion", "bob")
    assert (back.version, back.previous, back.updated_by) == (2, 3, "bob")
    assert store.get_version("fraud", "champion").version == 2
    moved = store.history("fraud", limit=1)[0]
    assert (moved.kind, moved.action, moved.version, moved.actor) == ("alias", "moved", 2, "bob")
    assert moved.data == {"previous": 3, "rollback": True, "from": 3, "to": 2}
    assert store.rollback_alias("fraud", "champion", "bob").version == 1
    before = store.history("fraud")
    with pytest.raises(NoPreviousVersion):
        store.rollback_alias("fraud", "champion", "bob")
    assert store.history("fraud") == before
    assert store.get_version("fraud", "champion").version == 1
    # A move after rollbacks is undone first; a move that changes nothing is not one.
    store.set_alias("fraud", "champion", 4, "cy")
    store.set_alias("fraud", "champion", 4, "cy")
    assert store.rollback_alias("fraud", "champion", "bob").version == 1
    with pytest.raises(NoPreviousVersion):
        store.rollback_alias("fraud", "champion", "bob")


def test_rollback_refuses_clearly_and_changes_nothing(store: RegistryStore) -> None:
    _three_moves(store)
    store.set_alias("fraud", "challenger", 4, "ann")
    store.delete_alias("fraud", "challenger", "ann")
    store.set_alias("fraud", "challenger", 4, "ann")  # what came before its delete is gone
    before = store.history("fraud")
    with pytest.raises(AliasMoved) as moved:
        store.rollback_alias("fraud", "champion", "bob", from_version=2)
    assert (moved.value.expected, moved.value.version) == (2, 3)
    for call, error in [
        (lambda: store.rollback_alias("fraud", "challenger", "bob"), NoPreviousVersion),
        (lambda: store.rollback_alias("fraud", "nobody", "bob"), AliasNotFound),
        (lambda: store.rollback_alias("ghost", "champion", "bob"), ModelNotFound),
        (lambda: store.rollback_alias("fraud", "bad alias!", "bob"), InvalidName),
        (lambda: store.rollback_alias("fraud", "latest", "bob"), InvalidName),
    ]:
        with pytest.raises(error):
            call()
    assert store.history("fraud") == before
    store.set_alias("fraud", "champion", 4, "ann")
    store.set_alias("fraud", "champion", 3, "ann")  # 4 is served by nothing else now...
    store.set_alias("fraud", "challenger", 1, "ann")
    store.archive_version("fraud", 4, "ann")  # ...and archived: no alias may point at it
    before = store.history("fraud")
    with pytest.raises(VersionArchived):
        store.rollback_alias("fraud", "champion", "bob")
    assert store.history("fraud") == before
    assert store.get_version("fraud", "champion").version == 3


def test_concurrent_rollbacks_from_one_version_move_it_once(
    store: RegistryStore, database_url: str
) -> None:
    _three_moves(store)
    other = RegistryStore.open(database_url)  # another process, in effect
    outcomes: list[object] = []
    lock = threading.Lock()

    def roll(s: RegistryStore) -> None:
        try:
            result: object = s.rollback_alias("fraud", "champion", "bob", from_version=3).version
        except AliasMoved as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=roll, args=(s,)) for s in (store, other) * 3]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    assert sorted(map(str, outcomes)).count("2") == 1
    assert sum(isinstance(o, AliasMoved) for o in outcomes) == 5
    assert store.get_version("fraud", "champion").version == 2


def test_push_with_aliases_points_them_in_the_same_transaction(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    _push(store, aliases=["champion", "latest-good"])
    assert store.get_version("fraud", "champion").aliases == ["champion", "latest-good"]


def test_archive_is_refused_while_served_and_blocks_new_aliases(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    _push(store, aliases=["champion"])
    _push(store)
    with pytest.raises(VersionArchived):
        store.archive_version("fraud", 1, "t")
    assert store.archive_version("fraud", 2, "t").archived
    with pytest.raises(VersionArchived):
        store.set_alias("fraud", "challenger", 2, "t")
    assert store.get_version("fraud", "latest").version == 1


def test_metrics_are_added_never_overwritten(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    _push(store, metrics={"auc": 0.9})
    assert store.log_metrics("fraud", 1, {"f1": 0.5}).metrics == {"auc": 0.9, "f1": 0.5}
    with pytest.raises(MetricExists):
        store.log_metrics("fraud", 1, {"auc": 0.1, "recall": 0.3})
    assert store.get_version("fraud", 1).metrics == {"auc": 0.9, "f1": 0.5}


def test_every_change_is_waiting_in_the_outbox_until_published(store: RegistryStore) -> None:
    store.create_model(ModelCreate(name="fraud"), "t")
    _push(store, aliases=["champion"])
    store.update_model("fraud", ModelUpdate(description="new"), "t")
    pending = store.unpublished_events()
    kinds = [(e.kind, e.action) for _, e in pending]
    assert kinds == [
        ("model", "created"),
        ("version", "created"),
        ("alias", "moved"),
        ("model", "updated"),
    ]
    store.mark_published([pending[0][0], pending[1][0]])
    assert [e.action for _, e in store.unpublished_events()] == ["moved", "updated"]


def test_sqlite_database_folder_is_created(tmp_path: Path) -> None:
    store = RegistryStore.open(f"sqlite:///{tmp_path / 'deep' / 'er' / 'r.db'}")
    store.close()
    assert (tmp_path / "deep" / "er" / "r.db").exists()

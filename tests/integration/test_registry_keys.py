"""API keys in the registry database, on SQLite and on PostgreSQL: digests only, events."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from aimesh.auth import hash_key
from aimesh.errors import KeyExists, KeyNotFound
from aimesh.registry import KeyCreate, LocalRegistry, ModelCreate, RegistryStore
from aimesh.registry.migrate import alembic_config, current_revision, head_revision
from aimesh.registry.store import create_engine


def test_migration_0003_adds_the_key_table_to_an_older_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as c:
            command.upgrade(alembic_config(c), "0002_trust")
        assert "api_keys" not in sa.inspect(engine).get_table_names()
        # A service reading keys from a registry not migrated yet sees none (and no error).
        assert RegistryStore(engine).key_entries() == []
        RegistryStore.open(database_url).close()
        with engine.connect() as c:
            assert current_revision(c) == head_revision()
        assert "api_keys" in sa.inspect(engine).get_table_names()
        with engine.begin() as c:
            command.downgrade(alembic_config(c), "0002_trust")
        assert "api_keys" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_keys_are_made_listed_and_revoked_and_only_digests_are_stored(
    registry: LocalRegistry,
) -> None:
    made = registry.create_key(KeyCreate(name="dash", scopes=["read"]), actor="ops@host")
    assert made.key.startswith("amk_") and made.info.scopes == ["read"]
    assert made.info.created_by == "ops@host" and made.info.revoked_at is None
    ci = registry.create_key(KeyCreate(name="ci", scopes=["write", "infer"]))
    assert ci.info.scopes == ["infer", "write"]

    [dash, entry_ci] = sorted(registry.key_entries(), key=lambda e: e.name, reverse=True)
    assert (dash.name, dash.sha256, dash.scopes) == ("dash", hash_key(made.key), {"read"})
    assert entry_ci.sha256 == hash_key(ci.key)
    with registry.store.engine.connect() as c:
        stored = [tuple(row) for row in c.execute(sa.text("SELECT * FROM api_keys"))]
    assert made.key not in repr(stored) and hash_key(made.key) in repr(stored)

    with pytest.raises(KeyExists):  # a name is unique among active keys
        registry.create_key(KeyCreate(name="dash", scopes=["admin"]))
    revoked = registry.revoke_key("dash", actor="ops@host")
    assert revoked.revoked_at is not None and revoked.revoked_by == "ops@host"
    assert [e.name for e in registry.key_entries()] == ["ci"]
    with pytest.raises(KeyNotFound):
        registry.revoke_key("dash")
    again = registry.create_key(KeyCreate(name="dash", scopes=["read"]))  # the name is free
    listed = registry.list_keys()
    assert [(k.name, k.revoked_at is None) for k in listed] == [
        ("ci", True),
        ("dash", True),
        ("dash", False),
    ]
    assert again.key != made.key


def test_every_key_change_is_an_event_that_never_carries_the_digest(
    registry: LocalRegistry,
) -> None:
    registry.create_model(ModelCreate(name="dash"))  # a model of the same name
    made = registry.create_key(KeyCreate(name="dash", scopes=["read"]), actor="ops@host")
    registry.revoke_key("dash", actor="ops@host")
    events = [entry for _, entry in registry.store.unpublished_events()]
    keys = [(e.kind, e.action, e.model, e.actor, e.data) for e in events if e.kind == "key"]
    assert keys == [
        ("key", "created", "dash", "ops@host", {"scopes": "read"}),
        ("key", "revoked", "dash", "ops@host", {"scopes": "read"}),
    ]
    assert hash_key(made.key) not in repr(events) and made.key not in repr(events)
    # The model's history is the model's own, not the key's that shares its name.
    assert [h.kind for h in registry.history("dash")] == ["model"]


def test_the_bus_event_of_a_key_names_it_in_its_subject(registry: LocalRegistry) -> None:
    from aimesh.registry.outbox import to_event

    registry.create_key(KeyCreate(name="ci", scopes=["write"]))
    [(event_id, entry)] = registry.store.unpublished_events()
    assert to_event(event_id, entry).subject() == "aimesh.events.registry.key.created.ci"

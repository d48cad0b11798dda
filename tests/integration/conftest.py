"""Fixtures for the registry: a database on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aimesh.registry import ArtifactStore, LocalRegistry, RegistryStore

POSTGRES_ADMIN_URL = os.environ.get(
    "AIMESH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_or_skip() -> sa.Engine:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and is not reachable: {exc.orig}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    return engine


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    admin = _postgres_or_skip()
    name = f"aimesh_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[RegistryStore]:
    """A migrated registry store."""
    opened = RegistryStore.open(database_url)
    yield opened
    opened.close()


@pytest.fixture
def registry(store: RegistryStore, tmp_path: Path) -> LocalRegistry:
    """A registry on the store, with artifacts in a temp folder."""
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), cache_dir=tmp_path / "cache")
    return LocalRegistry(store, artifacts, max_artifact_bytes=5_000_000, actor="tester@test")


@pytest.fixture(scope="session")
def fraud_data() -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic fraud-like data set: 30 features, imbalanced labels."""
    from aimesh.examples import make_fraud_dataset

    return make_fraud_dataset(n_rows=2_000, seed=3)


@pytest.fixture(scope="session")
def fraud_skops(
    tmp_path_factory: pytest.TempPathFactory, fraud_data: tuple[np.ndarray, np.ndarray]
) -> Path:
    """A logistic regression on the fraud data, saved with skops."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x, y = fraud_data
    model = LogisticRegression(max_iter=500).fit(x, y)
    path = tmp_path_factory.mktemp("models") / "fraud.skops"
    sio.dump(model, path)
    return path

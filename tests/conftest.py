"""Fixtures that start real servers on free ports and always stop them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aimesh.bus import EmbeddedNats


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """The bundled nats-server with JetStream in a temp folder, on a free port (never 4222).

    ``start()`` returns once the server's ``/healthz`` says ok; the server is stopped at the
    end of the session even when tests fail (and by ``start()`` itself if it never gets ready).
    """
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), start_timeout=30)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    """The ``nats://`` URL of the session's NATS server."""
    return nats_server.url

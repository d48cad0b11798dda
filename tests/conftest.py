"""Fixtures that start real servers on free ports and always stop them."""

from __future__ import annotations

import faulthandler
import os
import secrets
from collections.abc import Generator, Iterator

import pytest

from aimesh.bus import EmbeddedNats

# pytest-timeout (``timeout`` in pyproject.toml) interrupts a test with SIGALRM, which only
# works when the main thread runs Python. A test stuck inside native code (a Rust or C++
# call that never returns) would hang the whole run instead: this watchdog, a C thread of
# faulthandler's, prints every thread's stack and ends the run once a test overruns it.
HARD_TIMEOUT_S = 420
_real_stderr: list[int] = []
SESSION_TOKEN = secrets.token_hex(16)  # a copy of fd 2 taken while output is not captured


def pytest_configure(config: pytest.Config) -> None:
    _real_stderr.append(os.dup(2))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Each test (with its setup and teardown) under the hard watchdog."""
    faulthandler.dump_traceback_later(HARD_TIMEOUT_S, exit=True, file=_real_stderr[0])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """The bundled nats-server with JetStream in a temp folder, on a free port (never 4222).

    ``start()`` returns once the server's ``/healthz`` says ok; the server is stopped at the
    end of the session even when tests fail (and by ``start()`` itself if it never gets ready).
    """
    # With a token, as every home's bus has one: a client that forgets the credentials
    # fails here as it would for a user (the URL carries the token: see ``nats_url``).
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), start_timeout=30, token=SESSION_TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    """The ``nats://TOKEN@host:port`` URL of the session's NATS server."""
    return nats_server.url.replace("nats://", f"nats://{SESSION_TOKEN}@", 1)

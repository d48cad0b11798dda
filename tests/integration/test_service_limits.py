"""The registry service as a client meets it at its limits: full, and cut off mid-upload.

One registry process for the module, taking one request at a time
(``registry.max_concurrency: 1``): a request held in flight fills it. Requests are held and
cut off with raw sockets, the way a slow or vanished client does it.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from _services import Home, Service, wait_for

WAIT_S = 30.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Service]:
    """``aimesh registry serve`` taking one request at a time; it must stop cleanly."""
    root = tmp_path_factory.mktemp("limits")
    home = Home.create(root, nats_url, np.zeros((1, 1)), AIMESH_REGISTRY__MAX_CONCURRENCY="1")
    home.settings.home_dir.mkdir(mode=0o700, parents=True)
    service = home.registry_service()
    try:
        yield service
    finally:
        code = service.stop()
    assert code in (0, -15), service.log.read_text()


def _send_head(base: str, path: str, length: int, first: bytes) -> socket.socket:
    """A connection that sent a POST's head and the first bytes of its body; no more yet."""
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = socket.create_connection((host, port), timeout=WAIT_S)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the answer on ``sock`` (the server closes it after)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _status(url: str) -> int:
    return httpx.get(url, timeout=WAIT_S).status_code


def test_a_full_registry_refuses_at_once_with_503_and_still_answers_health(
    registry: Service,
) -> None:
    base = registry.http
    held = _send_head(base, "/api/registry/artifacts", 10, b"hello")
    try:
        # The upload waits for the rest of its body, holding the only slot.
        assert wait_for(lambda: _status(f"{base}/api/registry/models") == 503, WAIT_S)
        refused = httpx.get(f"{base}/api/registry/models", timeout=WAIT_S)
        assert refused.status_code == 503
        assert refused.json()["code"] == "overloaded"
        assert refused.json()["request_id"] == refused.headers["x-request-id"]
        assert int(refused.headers["retry-after"]) >= 1
        posted = httpx.post(f"{base}/api/registry/models", json={"name": "m"}, timeout=WAIT_S)
        assert (posted.status_code, posted.json()["code"]) == (503, "overloaded")
        # What says how the service is never waits for a slot.
        for route in ("/health", "/health/live", "/openapi.json", "/docs"):
            assert _status(base + route) == 200, route

        held.sendall(b"world")  # the rest of the body: the upload ends, its slot is free
        status, body = _answer(held)
    finally:
        held.close()
    assert status == 201, body
    assert hashlib.sha256(b"helloworld").hexdigest().encode() in body
    assert wait_for(lambda: _status(f"{base}/api/registry/models") == 200, WAIT_S)


def _staging(registry: Service) -> Path:
    """Where the registry stages uploads (HOME/artifacts/tmp)."""
    return registry.log.parent / "artifacts" / "tmp"


def test_an_upload_cut_off_mid_body_leaves_nothing_and_the_registry_serves_on(
    registry: Service,
) -> None:
    base = registry.http
    sent = b"x" * 256 * 1024
    cut = _send_head(base, "/api/registry/artifacts", 10 * 1024**2, sent)
    try:
        # The upload is under way: its bytes are being staged.
        assert wait_for(lambda: any(_staging(registry).glob("*.part")), WAIT_S)
    finally:
        cut.close()  # the client goes, 10 MiB short
    # Its slot is free again (the only one), and it left no staging file behind.
    assert wait_for(lambda: _status(f"{base}/api/registry/models") == 200, WAIT_S)
    assert list(_staging(registry).glob("*")) == []
    stored = httpx.get(f"{base}/api/registry/artifacts/{hashlib.sha256(sent).hexdigest()}")
    assert stored.status_code == 404, stored.text
    log = registry.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log
    assert "failed unexpectedly" not in log, log

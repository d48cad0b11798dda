"""The HTTP edge's pure checks, by table: Host names, browser origins, media types, binds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from aimesh.config import Settings
from aimesh.errors import HostRefused, InsecureBind, OriginRefused, UnsupportedMediaType
from aimesh.rest import (
    Guard,
    GuardedApp,
    check_bind,
    check_infer_type,
    check_json_type,
    host_name,
    is_infer_type,
    is_json_type,
    is_loopback,
)


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"localhost", b"localhost"),
        (b"LocalHost:8100", b"localhost"),
        (b"127.0.0.1:9000", b"127.0.0.1"),
        (b"[::1]:9000", b"[::1]"),
        (b"[::1]", b"[::1]"),
        (b"gateway.example.com:443", b"gateway.example.com"),
        (b"[broken", b"[broken"),
    ],
)
def test_host_name_drops_the_port_and_lowers_the_case(host: bytes, name: bytes) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    ("content_type", "json_", "infer"),
    [
        (b"application/json", True, True),
        (b"Application/JSON; charset=utf-8", True, True),
        (b"application/problem+json", True, True),
        (None, False, True),  # OIP clients send none: read as JSON, never unpickled
        (b"application/octet-stream", False, True),
        (b"text/plain", False, False),
        (b"text/plain;charset=UTF-8", False, False),
        (b"application/x-www-form-urlencoded", False, False),
        (b"multipart/form-data; boundary=x", False, False),
        (b"application/x-pickle", False, False),
        (b"application/vnd.aimesh+pickle", False, False),
        (b"application/python-pickle", False, False),
        (b"text/json", False, False),
        (b"application/jsonp", False, False),
    ],
)
def test_media_types_json_endpoints_and_infer_read(
    content_type: bytes | None, json_: bool, infer: bool
) -> None:
    assert is_json_type(content_type) is json_
    assert is_infer_type(content_type) is infer
    if not json_:
        with pytest.raises(UnsupportedMediaType) as caught:
            check_json_type(content_type)
        assert caught.value.code == "unsupported_media_type"
    if not infer:
        with pytest.raises(UnsupportedMediaType):
            check_infer_type(content_type)


@pytest.mark.parametrize(
    ("allowed", "host", "reached", "ok"),
    [
        ([], b"localhost:8100", "127.0.0.1", True),
        ([], b"127.0.0.1:8100", "127.0.0.1", True),
        ([], b"[::1]:8100", "::1", True),
        ([], b"0.0.0.0:8100", "127.0.0.1", True),  # a service announced at its wildcard bind
        ([], b"192.168.1.5:8100", "192.168.1.5", True),  # the address the connection reached
        ([], b"192.168.1.5:8100", "127.0.0.1", False),
        ([], b"evil.example:8100", "127.0.0.1", False),  # DNS rebinding
        ([], b"localhost.evil.example", "127.0.0.1", False),
        ([], b"testserver", "testserver", True),
        (["gateway.example.com"], b"Gateway.Example.com:443", "10.0.0.2", True),
        (["gateway.example.com"], b"other.example.com", "10.0.0.2", False),
        (["*.example.com"], b"a.example.com", None, True),
        (["*.example.com"], b"a.b.example.com:80", None, True),
        (["*.example.com"], b"example.com", None, False),
        (["*.example.com"], b"badexample.com", None, False),
        (["::2"], b"[::2]:80", None, True),
        (["*"], b"anything.at.all", None, True),
    ],
)
def test_host_names_a_service_answers_to(
    allowed: list[str], host: bytes, reached: str | None, ok: bool
) -> None:
    assert Guard(allowed_hosts=allowed).host_allowed(host, reached) is ok


@pytest.mark.parametrize(
    ("allowed", "origin", "host", "ok"),
    [
        ([], b"https://evil.example", b"127.0.0.1:8100", False),
        ([], b"null", b"127.0.0.1:8100", False),
        ([], b"http://127.0.0.1:8100", b"127.0.0.1:8100", True),  # its own /docs page
        ([], b"http://localhost:8100", b"127.0.0.1:8100", False),
        ([], b"http://127.0.0.1:8101", b"127.0.0.1:8100", False),
        ([], b"http://127.0.0.1:8100", None, False),
        (["https://dash.example.com"], b"https://dash.example.com", b"127.0.0.1", True),
        (["https://dash.example.com/"], b"HTTPS://DASH.example.com", b"127.0.0.1", True),
        (["https://dash.example.com"], b"http://dash.example.com", b"127.0.0.1", False),
        (["*"], b"https://evil.example", b"127.0.0.1", True),
    ],
)
def test_origins_that_may_change_things(
    allowed: list[str], origin: bytes, host: bytes | None, ok: bool
) -> None:
    assert Guard(allowed_origins=allowed).origin_allowed(origin, host) is ok


def test_with_any_host_a_page_of_the_same_name_is_no_longer_its_own() -> None:
    # With Host unchecked, a rebound name is "the same origin": only the list admits pages.
    guard = Guard(allowed_hosts=["*"])
    assert not guard.origin_allowed(b"http://evil.example:8100", b"evil.example:8100")


SCOPE: dict[str, Any] = {"server": ("127.0.0.1", 8100)}


@pytest.mark.parametrize(
    ("method", "host", "origin", "refused"),
    [
        ("POST", b"127.0.0.1:8100", None, None),  # CLI, curl, servers
        ("POST", None, None, None),  # HTTP/1.0 without Host
        ("POST", b"127.0.0.1:8100", b"https://evil.example", OriginRefused),
        ("PUT", b"127.0.0.1:8100", b"https://evil.example", OriginRefused),
        ("DELETE", b"127.0.0.1:8100", b"https://evil.example", OriginRefused),
        ("PATCH", b"127.0.0.1:8100", b"https://evil.example", OriginRefused),
        ("GET", b"127.0.0.1:8100", b"https://evil.example", None),
        ("HEAD", b"127.0.0.1:8100", b"https://evil.example", None),
        ("OPTIONS", b"127.0.0.1:8100", b"https://evil.example", None),
        ("GET", b"evil.example:8100", None, HostRefused),
        ("POST", b"evil.example:8100", b"http://evil.example:8100", HostRefused),
    ],
)
def test_check_refuses_foreign_hosts_then_foreign_origins(
    method: str, host: bytes | None, origin: bytes | None, refused: type[Exception] | None
) -> None:
    guard = Guard()
    if refused is None:
        guard.check(method, host, origin, SCOPE)
        guard.check(method, host, origin, SCOPE)  # the remembered Host takes the short path
    else:
        with pytest.raises(refused):
            guard.check(method, host, origin, SCOPE)


def test_check_scope_reads_the_headers_and_returns_the_content_type() -> None:
    scope = {
        **SCOPE,
        "method": "POST",
        "headers": [(b"host", b"localhost:1"), (b"content-type", b"application/json")],
    }
    assert Guard().check_scope(scope) == b"application/json"
    scope["headers"].append((b"origin", b"https://evil.example"))
    with pytest.raises(OriginRefused) as caught:
        Guard().check_scope(scope)
    assert caught.value.code == "origin_refused"


# -- the ASGI wrapper of the FastAPI services ------------------------------------------------


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app answering the body it read (its length, and whether it was whole)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    answer = json.dumps({"read": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": answer})


def _call(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/api/x"
) -> tuple[int, dict[str, Any]]:
    app = GuardedApp(_echo, guard=Guard(), max_body_bytes=10, raw_bodies=[r"/api/up/[^/]+"])
    scope = {
        "type": "http", "method": "POST", "path": path, "server": ("127.0.0.1", 1),
        "headers": [(b"host", b"127.0.0.1:1"), *headers],
    }  # fmt: skip
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


JSON_TYPE = (b"content-type", b"application/json")


@pytest.mark.parametrize(
    ("headers", "chunks", "path", "status", "code"),
    [
        ([JSON_TYPE, (b"content-length", b"4")], [b"{}{}"], "/api/x", 200, None),
        ([(b"content-type", b"text/plain"), (b"content-length", b"2")], [b"{}"], "/api/x",
         415, "unsupported_media_type"),
        ([(b"content-length", b"2")], [b"{}"], "/api/x", 415, "unsupported_media_type"),
        ([(b"content-length", b"0")], [b""], "/api/x", 200, None),  # no body: nothing to type
        ([], [b""], "/api/x", 200, None),
        ([JSON_TYPE, (b"content-length", b"11")], [b"x" * 11], "/api/x", 413,
         "request_too_large"),
        ([JSON_TYPE, (b"transfer-encoding", b"chunked")], [b"x" * 6, b"x" * 6], "/api/x", 413,
         "request_too_large"),
        ([JSON_TYPE, (b"transfer-encoding", b"chunked")], [b"x" * 5, b"x" * 5], "/api/x", 200,
         None),
        # An upload route streams and bounds its own body, of its own type.
        ([(b"content-type", b"application/octet-stream"), (b"content-length", b"20")],
         [b"x" * 20], "/api/up/a", 200, None),
        ([(b"content-length", b"20")], [b"x" * 20], "/api/up/a/b", 415, "unsupported_media_type"),
        ([JSON_TYPE, (b"origin", b"https://evil.example")], [b""], "/api/x", 403,
         "origin_refused"),
    ],
)  # fmt: skip
def test_guarded_app_types_and_bounds_json_bodies(
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    path: str,
    status: int,
    code: str | None,
) -> None:
    got_status, body = _call(headers, chunks, path)
    assert got_status == status, body
    if code is None:
        assert body["read"] == sum(len(c) for c in chunks)
    else:
        assert body["code"] == code and body["error"]


# -- where a service may bind ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("myhost.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(home=tmp_path, **values)


def test_a_keyless_bind_beyond_loopback_is_refused_unless_insecure(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert check_bind(settings, "127.0.0.1", "registry") is None
    with pytest.raises(InsecureBind) as caught:
        check_bind(settings, "0.0.0.0", "registry")
    assert caught.value.code == "insecure_bind"
    assert "--insecure" in caught.value.message
    warning = check_bind(settings, "0.0.0.0", "registry", insecure=True)
    assert warning is not None and "no API key" in warning
    accepted = _settings(tmp_path, auth={"insecure": True})
    assert check_bind(accepted, "192.168.1.5", "lake") is not None


def test_a_bind_beyond_loopback_passes_once_keys_exist(tmp_path: Path) -> None:
    keys = [{"name": "ops", "sha256": "0" * 64, "scopes": ["admin"]}]
    settings = _settings(tmp_path, auth={"keys": keys})
    assert check_bind(settings, "0.0.0.0", "registry") is None

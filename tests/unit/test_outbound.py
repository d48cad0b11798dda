"""Outbound calls to user-supplied URLs: refused where they would reach inside, sent only
to the address that was checked, never redirected."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from aimesh.errors import UrlRefused
from aimesh.outbound import OutboundClient, OutboundPolicy, check_url, refusal

NOBODY = OutboundPolicy.of([])

REFUSED = [
    "http://127.0.0.1:8200/api/lake/datasets/tx/compact",
    "http://[::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost/",
    "http://localhost./",
    "http://127.1/",
    "http://0x7f.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.100.100.200/",
    "http://192.0.0.192/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "file:///etc/passwd",
    "ftp://x/",
    "gopher://127.0.0.1/",
    "http://user:pw@example.com/",
    "http://:pw@example.com/",
    "http:///path",
    "http://exa mple.com/",
    "not a url",
]


@pytest.mark.parametrize("url", REFUSED)
def test_urls_that_reach_inside_or_are_not_http_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        asyncio.run(check_url(url, NOBODY))
    body = refused.value.to_dict()
    assert body["code"] == "url_refused" and "refused" in body["error"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:808:808::", True),  # 6to4 of 8.8.8.8
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo of 127.0.0.1
        ("ff02::1", False),
        ("198.18.0.1", False),
        ("240.0.0.1", False),
    ],
)
def test_only_public_addresses_pass(address: str, public: bool) -> None:
    assert (refusal(ipaddress.ip_address(address)) is None) == public


def test_the_allow_list_admits_hosts_addresses_and_networks() -> None:
    async def main() -> None:
        for entries, url in [
            (["127.0.0.1"], "http://127.0.0.1:9/"),
            (["127.0.0.0/8"], "http://127.1/"),
            (["localhost"], "http://localhost/"),
            (["::1"], "http://[::1]/"),
            (["[::1]"], "http://[::1]/"),
        ]:
            checked = await check_url(url, OutboundPolicy.of(entries))
            assert checked.addresses
        with pytest.raises(UrlRefused):  # another loopback address than the allowed one
            await check_url("http://127.0.0.2/", OutboundPolicy.of(["127.0.0.1"]))
        with pytest.raises(UrlRefused):  # allow-listing never admits another scheme
            await check_url("file:///etc/passwd", OutboundPolicy.of(["127.0.0.1", "localhost"]))

    asyncio.run(main())


class _Receiver(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((self.path, self.headers["Host"]))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    """A local HTTP server recording (path, Host) of each POST; yields its port."""
    _Receiver.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_call_goes_to_the_checked_address_with_the_names_host_and_no_redirect(
    receiver: int,
) -> None:
    async def main() -> list[int]:
        client = OutboundClient(OutboundPolicy.of(["127.0.0.1", "::1"]), timeout_s=5)
        try:
            named = await client.post(
                f"http://localhost:{receiver}/hook", content=b"{}", headers={}
            )
            moved = await client.post(f"http://127.0.0.1:{receiver}/moved", content=b"", headers={})
            with pytest.raises(UrlRefused):
                await client.post(f"http://127.0.0.2:{receiver}/no", content=b"", headers={})
            return [named.status_code, moved.status_code]
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [204, 302]
    assert _Receiver.calls == [
        ("/hook", f"localhost:{receiver}"),
        ("/moved", f"127.0.0.1:{receiver}"),
    ]  # the redirect was not followed; the refused call never left


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """An HTTPS receiver whose certificate names ``localhost`` only (not 127.0.0.1); yields
    its port and a client context trusting that certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    _Receiver.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    server.socket = served.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), ssl.create_default_context(cafile=str(cert))
    finally:
        server.shutdown()
        server.server_close()


def test_tls_checks_the_certificate_against_the_name_though_it_connects_to_the_address(
    tls_receiver: tuple[int, ssl.SSLContext],
) -> None:
    port, trusted = tls_receiver

    async def main() -> int:
        client = OutboundClient(
            OutboundPolicy.of(["127.0.0.1", "::1"]), timeout_s=5, verify=trusted
        )
        try:
            # By address, the certificate (localhost only) does not match: refused by TLS.
            with pytest.raises(httpx.ConnectError):
                await client.post(f"https://127.0.0.1:{port}/by-ip", content=b"", headers={})
            named = await client.post(f"https://localhost:{port}/hook", content=b"", headers={})
            return named.status_code
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 204
    assert _Receiver.calls == [("/hook", f"localhost:{port}")]

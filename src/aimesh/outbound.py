"""Outbound calls to URLs a user supplies (webhooks today): checked, then sent where checked.

A user-supplied URL must not make an aimesh process call itself, its neighbours or the
cloud's metadata service (SSRF). :func:`check_url` parses the URL (``http``/``https``, a
host, no user info), resolves the host and refuses (:class:`~aimesh.errors.UrlRefused`,
``url_refused``) when any address it resolves to is loopback, link-local, private,
unique-local, CGNAT, unspecified, multicast, reserved, an IPv6 address carrying such an
IPv4 address (mapped, 6to4, Teredo, NAT64), or a known metadata address, unless the
operator's allow-list (:class:`OutboundPolicy`) names the host or the address.

:class:`OutboundClient` sends: it checks again at the moment of sending and connects to the
exact address it checked (the URL's host goes in ``Host`` and in TLS's SNI and certificate
check), so a name that resolves differently between the check and the connection (DNS
rebinding) cannot slip through. Redirects are never followed, and proxies from the
environment are not used (they would connect somewhere else than what was checked).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx

from aimesh.errors import UrlRefused

__all__ = [
    "Destination",
    "OutboundClient",
    "OutboundPolicy",
    "check_url",
    "parse_url",
    "refusal",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this" network
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT (also Alibaba's metadata, 100.100.100.200)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local (the cloud metadata address 169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments (Oracle's metadata, 192.0.0.192)
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "fc00::/7",  # unique local (AWS's IPv6 metadata, fd00:ec2::254)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class OutboundPolicy:
    """The operator's allow-list: hosts and networks that outbound calls may reach anyway."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    setting: str = "jobs.webhook_allow"
    """The setting that holds the list, named in refusals."""

    @classmethod
    def of(cls, entries: Iterable[str], setting: str = "jobs.webhook_allow") -> OutboundPolicy:
        """A policy from setting entries: IP addresses, CIDR networks or host names."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip().lower()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            except ValueError:
                hosts.add(text.rstrip("."))
        return cls(frozenset(hosts), tuple(networks), setting)

    def allows_host(self, host: str) -> bool:
        """Whether the operator allowed ``host`` by name (any address it resolves to)."""
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Whether the operator allowed ``address`` (or a network holding it)."""
        return any(address.version == n.version and address in n for n in self.networks)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination, or ``None`` when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in n for n in _REFUSED_V6):
            return "a loopback, link-local, private or multicast IPv6 address"
        inner = _embedded_v4(address)
        if inner is not None:
            why = refusal(inner)
            return f"an IPv6 address carrying {why}" if why else None
    elif any(address in n for n in _REFUSED_V4):
        return "a loopback, link-local, private, CGNAT, multicast or reserved address"
    if not address.is_global or address.is_reserved or address.is_multicast:
        return "not a public address"
    return None


def parse_url(url: str) -> httpx.URL:
    """``url`` parsed, if it is an ``http(s)`` URL with a host and no user info."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UrlRefused(url, "it holds spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlRefused(url, f"it is not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(url, "only http and https URLs are called")
    if parsed.userinfo:
        raise UrlRefused(url, "it carries a user name or password")
    if not parsed.host:
        raise UrlRefused(url, "it has no host")
    return parsed


@dataclass(frozen=True)
class Destination:
    """A checked URL and the addresses it may be sent to (every one checked)."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]


async def _resolve(url: httpx.URL) -> list[IPAddress]:
    host = url.raw_host.decode("ascii")
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(str(url), f"its host {url.host!r} does not resolve") from exc
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in found:
            found.append(address)
    return found


async def check_url(url: str, policy: OutboundPolicy) -> Destination:
    """``url`` checked against ``policy``: every address its host resolves to must be allowed.

    Raises :class:`~aimesh.errors.UrlRefused` otherwise.
    """
    parsed = parse_url(url)
    addresses = await _resolve(parsed)
    if not addresses:
        raise UrlRefused(url, f"its host {parsed.host!r} does not resolve")
    if not policy.allows_host(parsed.host):
        for address in addresses:
            why = refusal(address)
            if why is not None and not policy.allows_address(address):
                raise UrlRefused(
                    url,
                    # Not the address itself: refusals must not map internal names.
                    f"{parsed.host} resolves to {why} (allow it in {policy.setting} if "
                    "it is meant to be called)",
                )
    return Destination(parsed, tuple(addresses))


class OutboundClient:
    """Sends requests to user-supplied URLs: checked when sent, to the address checked."""

    def __init__(
        self, policy: OutboundPolicy, *, timeout_s: float, verify: ssl.SSLContext | bool = True
    ) -> None:
        self.policy = policy
        self._client = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, trust_env=False, verify=verify
        )

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST ``content`` to ``url`` (checked now); a redirect is returned, not followed.

        Tries the checked addresses in order until one connects. Raises
        :class:`~aimesh.errors.UrlRefused`, or :class:`httpx.HTTPError` when none answers.
        """
        destination = await check_url(url, self.policy)
        target = destination.url
        host_header = target.netloc.decode("ascii")
        error: httpx.TransportError | None = None
        for address in destination.addresses:
            request = self._client.build_request(
                "POST",
                target.copy_with(host=str(address)),
                content=content,
                headers={**headers, "Host": host_header},
                extensions={"sni_hostname": target.raw_host.decode("ascii")},
            )
            try:
                return await self._client.send(request, follow_redirects=False)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

"""The HTTP edge every service shares: what a browser page or a stranger's name may not do.

Three checks, the same on every port (registry, lake, jobs, model services, gateway, the
workers' health port), none of them needing a key:

- **Origin**: a changing request (anything but GET/HEAD/OPTIONS) that carries a browser
  ``Origin`` is refused (403 ``origin_refused``) unless the origin is the service's own
  (its ``/docs`` page) or listed in ``auth.allowed_origins``. No ``Origin`` (CLI, curl,
  servers) passes.
- **Host**: the ``Host`` header must name the service (400 ``host_refused``): ``localhost``,
  ``127.0.0.1``, ``[::1]``, the wildcard addresses, the address the connection reached (so
  the bind address), or a name in ``auth.allowed_hosts``. A page that DNS rebinding pointed
  at a local port sends its own name and is refused.
- **Media type**: an endpoint that reads JSON reads only ``application/json`` (or
  ``+json``); 415 ``unsupported_media_type`` otherwise, so that a page cannot send JSON as
  ``text/plain`` to skip the CORS preflight. OIP ``infer`` also takes
  ``application/octet-stream`` (the binary tensor extension) and no type at all (OIP
  clients send none); nothing is ever unpickled.

:class:`Guard` holds the checks (pure, a few compares per request: the hot paths call it
directly); :class:`GuardedApp` wraps a FastAPI app with them, types and bounds its JSON
bodies (413 ``request_too_large`` before the app reads a byte past the limit), and bounds
the requests it has in flight (503 ``overloaded`` with ``Retry-After``, see
:mod:`aimesh.rest.inflight`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aimesh.config import AuthSettings
from aimesh.errors import (
    AimeshError,
    HostRefused,
    OriginRefused,
    RequestTooLarge,
    UnsupportedMediaType,
)
from aimesh.rest.asgi import ASGIScope, Message, Receive, Send, error_body, read_body, respond
from aimesh.rest.errors import log_failure, request_id_of
from aimesh.rest.inflight import InFlight
from aimesh.rest.status import error_headers, shown_message, status_of

__all__ = [
    "SAFE_METHODS",
    "Guard",
    "GuardedApp",
    "check_infer_type",
    "check_json_type",
    "host_name",
    "is_infer_type",
    "is_json_type",
]

log = logging.getLogger("aimesh.rest")

ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: never refused for their origin."""

# Names every service answers to, wherever it binds: none can be an attacker's DNS name.
_ALWAYS = frozenset({b"localhost", b"127.0.0.1", b"[::1]", b"0.0.0.0", b"[::]"})
# Host values seen and accepted, kept for a cheap hot path; bounded, since clients choose them.
_MAX_REMEMBERED = 1024


def host_name(host: bytes) -> bytes:
    """The name of a ``Host`` value, lower case, without its port (``[::1]:80`` -> ``[::1]``)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return (host[: end + 1] if end > 0 else host).lower()
    return host.partition(b":")[0].lower()


def _as_name(address: str) -> bytes:
    """An address or name as a Host names it (IPv6 in brackets), lower case."""
    text = address.strip().lower()
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"
    return text.encode("idna" if not text.isascii() else "ascii")


def _media(content_type: bytes) -> bytes:
    return content_type.partition(b";")[0].strip().lower()


def is_json_type(content_type: bytes | None) -> bool:
    """Whether a Content-Type is JSON: ``application/json`` or ``application/*+json``."""
    if content_type is None:
        return False
    media = _media(content_type)
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def is_infer_type(content_type: bytes | None) -> bool:
    """Whether OIP ``infer`` reads a body of this type: JSON, the binary extension, or none."""
    return (
        content_type is None
        or is_json_type(content_type)
        or _media(content_type) == b"application/octet-stream"
    )


def check_json_type(content_type: bytes | None) -> None:
    """Refuse a body that is not declared JSON (:class:`UnsupportedMediaType`)."""
    if not is_json_type(content_type):
        raise UnsupportedMediaType(_text(content_type), "application/json")


def check_infer_type(content_type: bytes | None) -> None:
    """Refuse an ``infer`` body of a type OIP does not define (:class:`UnsupportedMediaType`)."""
    if not is_infer_type(content_type):
        raise UnsupportedMediaType(
            _text(content_type),
            "application/json, or application/octet-stream with Inference-Header-Content-Length",
        )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")[:200]


class Guard:
    """The origin and host checks of one service, from ``auth`` settings."""

    __slots__ = ("_any_host", "_any_origin", "_hosts", "_origins", "_seen", "_suffixes")

    def __init__(
        self, *, allowed_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()
    ) -> None:
        origins = {o.strip().lower().rstrip("/") for o in allowed_origins if o.strip()}
        hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self._any_origin = "*" in origins
        self._origins = frozenset(o.encode() for o in origins - {"*"})
        self._any_host = "*" in hosts
        self._suffixes = tuple(b"." + _as_name(h[2:]) for h in hosts if h.startswith("*."))
        self._hosts = _ALWAYS | {_as_name(h) for h in hosts if not h.startswith("*")}
        self._seen: set[bytes] = set()

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> Guard:
        """The guard ``auth.allowed_origins`` and ``auth.allowed_hosts`` describe."""
        return cls(allowed_origins=auth.allowed_origins, allowed_hosts=auth.allowed_hosts)

    def check(
        self, method: str, host: bytes | None, origin: bytes | None, scope: ASGIScope
    ) -> None:
        """Refuse a foreign ``Host`` (:class:`HostRefused`), then a foreign ``Origin``.

        ``scope`` gives the address the connection reached (``scope["server"]``).
        """
        if host is not None and host not in self._seen:
            self._check_host(host, scope)
        if origin is not None and method not in SAFE_METHODS:
            self._check_origin(origin, host)

    def check_scope(self, scope: ASGIScope) -> bytes | None:
        """:meth:`check` a request by its ASGI scope; returns its Content-Type, if any."""
        host = origin = content_type = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value
        self.check(scope["method"], host, origin, scope)
        return content_type

    def host_allowed(self, host: bytes, reached: str | None) -> bool:
        """Whether ``host`` (a Host value) names this service; ``reached``: the local address."""
        if self._any_host:
            return True
        name = host_name(host)
        if name in self._hosts:
            return True
        if reached is not None and name == _as_name(reached):
            return True
        return any(name.endswith(suffix) for suffix in self._suffixes)

    def origin_allowed(self, origin: bytes, host: bytes | None) -> bool:
        """Whether a changing request from the page ``origin`` may pass (``host``: its Host)."""
        if self._any_origin:
            return True
        value = origin.lower().rstrip(b"/")
        if value in self._origins:
            return True
        # The service's own pages (/docs): same origin as the Host the request names, trusted
        # only when Host is checked (else a rebound name would be "the same origin").
        if host is None or self._any_host:
            return False
        host = host.lower()
        return value == b"http://" + host or value == b"https://" + host

    def _check_host(self, host: bytes, scope: ASGIScope) -> None:
        server = scope.get("server")
        if not self.host_allowed(host, server[0] if server else None):
            raise HostRefused(_text(host) or "")
        if len(self._seen) < _MAX_REMEMBERED:
            self._seen.add(host)

    def _check_origin(self, origin: bytes, host: bytes | None) -> None:
        if not self.origin_allowed(origin, host):
            raise OriginRefused(_text(origin) or "")


class GuardedApp:
    """An ASGI app behind a :class:`Guard`, its JSON bodies typed and bounded, its load too.

    A request with a body (Content-Length above 0, or chunked) to a route not matched by
    ``raw_bodies`` (regular expressions over the path: uploads, which stream and bound their
    own bodies) must be JSON (415) and at most ``max_body_bytes`` (413, declared or sent);
    such a body is read here, then handed to the app. With ``in_flight``, a request past its
    limit is refused (503 ``overloaded``, ``Retry-After``) and one admitted is counted until
    the app is done with it, its body's arrival included. Errors are the JSON error body.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: Guard,
        max_body_bytes: int | None = None,
        raw_bodies: Sequence[str] = (),
        in_flight: InFlight | None = None,
    ) -> None:
        self.app = app
        self.guard = guard
        self.max_body_bytes = max_body_bytes
        self.raw_bodies = [re.compile(pattern) for pattern in raw_bodies]
        self.in_flight = in_flight

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            content_type = self.guard.check_scope(scope)
            slot = None if self.in_flight is None else self.in_flight.enter(scope["path"])
        except AimeshError as exc:
            await self._refuse(scope, send, exc)
            return
        try:
            if self.max_body_bytes is not None and self._carries_json(scope):
                try:
                    check_json_type(content_type)
                    receive = await self._buffered(scope, receive, self.max_body_bytes)
                except AimeshError as exc:
                    await self._refuse(scope, send, exc)
                    return
            await self.app(scope, receive, send)
        finally:
            if self.in_flight is not None:
                self.in_flight.leave(slot)

    @staticmethod
    async def _refuse(scope: ASGIScope, send: Send, exc: AimeshError) -> None:
        """Answer ``exc`` as the app's own error handlers would (body, headers, log)."""
        request_id = request_id_of(scope)
        status = status_of(exc)
        log_failure(log, exc, status, request_id)
        body = error_body(shown_message(exc, status), exc.code, request_id)
        await respond(send, status, body, request_id, extra=error_headers(exc, status))

    def _carries_json(self, scope: ASGIScope) -> bool:
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked and (length is None or length.strip(b"0 ") == b""):
            return False
        path: str = scope["path"]
        return not any(pattern.fullmatch(path) for pattern in self.raw_bodies)

    @staticmethod
    async def _buffered(scope: ASGIScope, receive: Receive, limit: int) -> Receive:
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        if declared is not None and declared > limit:
            raise RequestTooLarge(declared, limit)
        body = await read_body(receive, declared, limit)
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay

"""Which keys a service accepts now, and the check of each request against them.

A :class:`Keyring` holds the keys (static ones from settings, those stored in the
registry, the service credential), a token bucket per rate-limited key, and the count of
failed attempts per client (:class:`FailedAttempts`). A presented key is hashed and
compared with every digest in constant time. Auth is on whenever any key exists (static or
stored; the service credential alone does not count); off, every caller is
:data:`~aimesh.auth.LOCAL_OPERATOR`. Stored keys are replaced whole when the registry says
they changed (:meth:`Keyring.replace`); until they were read once, auth stays on (a service
that cannot read its keys refuses rather than opens).

No HTTP here: adapters pass the presented key, the client's address and the route's
scope; they turn the errors (:class:`Unauthorized`, :class:`Forbidden`,
:class:`RateLimited`, :class:`AuthThrottled`) into statuses and headers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aimesh.auth import LOCAL_OPERATOR, SCOPES, Identity, Scope
from aimesh.errors import AuthThrottled, RateLimited, Unauthorized

__all__ = [
    "ANONYMOUS",
    "SERVICE",
    "FailedAttempts",
    "KeyEntry",
    "Keyring",
    "TokenBucket",
]

SERVICE = "service"
"""The name of the service credential's identity."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One accepted key: its holder's name, its sha256 (hex), its scopes, its rate limit."""

    name: str
    sha256: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    rate_per_s: float | None = None
    burst: int | None = None


class TokenBucket:
    """``rate_per_s`` requests per second on average, up to ``burst`` at once."""

    __slots__ = ("burst", "rate_per_s", "tokens", "updated")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> float:
        """Spend one token: 0 if there was one, else the seconds until there will be."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_s)
            self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


class FailedAttempts:
    """Counts unknown keys per client; ``limit`` of them within ``window_s`` throttle it.

    A throttled client is refused (even with a good key) until its oldest failure in the
    window is ``window_s`` old. At most ``max_clients`` are remembered (the least recently
    failing are forgotten first), so a flood of addresses cannot grow it without bound.
    """

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, client: str, now: float) -> float:
        """Seconds ``client`` must wait before it may try a key again (0: it may now)."""
        failures = self._failures.get(client)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window_s - now

    def failed(self, client: str, now: float) -> None:
        """Record one failed attempt of ``client`` at ``now``."""
        failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
        failures.append(now)
        self._failures[client] = failures
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


@dataclass(slots=True)
class _Key:
    digest: bytes
    identity: Identity
    bucket: TokenBucket | None


class Keyring:
    """The keys one service accepts, checked per request; see the module's docstring."""

    def __init__(
        self,
        *,
        static: Sequence[KeyEntry] = (),
        service_key: str | None = None,
        stored: Sequence[KeyEntry] | None = (),
        attempts: FailedAttempts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stored=None`` means the stored keys are not known yet (auth on until they are)."""
        self._clock = clock
        self.attempts = attempts or FailedAttempts()
        self._static = [self._key(entry, "key") for entry in static]
        service = Identity.of(SERVICE, SCOPES, "service")
        self._service = (
            [_Key(bytes.fromhex(_digest(service_key)), service, None)] if service_key else []
        )
        self._stored: list[_Key] | None = None
        if stored is not None:
            self.replace(stored)
        self._all = self._static + self._service + (self._stored or [])

    @property
    def enabled(self) -> bool:
        """Whether keys are required: some key exists, or the stored ones are not known yet."""
        return self._stored is None or bool(self._static) or bool(self._stored)

    @property
    def loaded(self) -> bool:
        """Whether the stored keys were read at least once."""
        return self._stored is not None

    def replace(self, stored: Iterable[KeyEntry]) -> None:
        """Accept exactly ``stored`` (and the static keys) from now on; buckets carry over."""
        buckets = {k.digest: k.bucket for k in self._stored or []}
        keys = []
        for entry in stored:
            key = self._key(entry, "key")
            if key.digest in buckets:
                key.bucket = buckets[key.digest]
            keys.append(key)
        self._stored = keys
        self._all = self._static + self._service + keys

    def _key(self, entry: KeyEntry, kind: str) -> _Key:
        bucket = None
        if entry.rate_per_s:
            burst = entry.burst or max(1.0, 2 * entry.rate_per_s)
            bucket = TokenBucket(entry.rate_per_s, burst, self._clock())
        return _Key(bytes.fromhex(entry.sha256), Identity.of(entry.name, entry.scopes), bucket)

    def authenticate(
        self, presented: str | None, *, client: str = "unknown", on_behalf: str | None = None
    ) -> Identity:
        """Who presents ``presented``; :data:`LOCAL_OPERATOR` while auth is off.

        ``on_behalf`` is the :data:`~aimesh.auth.IDENTITY_HEADER` value; believed only with
        the service credential. Raises :class:`Unauthorized` (no key, unknown key),
        :class:`AuthThrottled` (this client failed too often) or :class:`RateLimited`.
        """
        if not self.enabled:
            return LOCAL_OPERATOR
        if presented is None:
            raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
        now = self._clock()
        wait = self.attempts.wait(client, now)
        if wait > 0:
            raise AuthThrottled(client, wait)
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found: _Key | None = None
        for key in self._all:  # every digest is compared, so timing says nothing of which
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            self.attempts.failed(client, now)
            raise Unauthorized("unknown API key")
        if found.bucket is not None:
            wait = found.bucket.take(now)
            if wait > 0:
                raise RateLimited(found.identity.name, wait)
        if on_behalf and found.identity.kind == "service":
            return Identity.from_header(on_behalf)
        return found.identity

    def check(
        self,
        presented: str | None,
        scope: Scope | None,
        *,
        client: str = "unknown",
        on_behalf: str | None = None,
    ) -> Identity:
        """:meth:`authenticate`, then :class:`Forbidden` unless the identity holds ``scope``.

        An open route (``scope`` None) checks nothing and is called by the local operator's
        stand-in when auth is off, or by an anonymous identity with no scope when it is on.
        """
        if scope is None:
            return LOCAL_OPERATOR if not self.enabled else ANONYMOUS
        identity = self.authenticate(presented, client=client, on_behalf=on_behalf)
        identity.require(scope)
        return identity


ANONYMOUS = Identity.of("anonymous", ())
"""Who calls an open route (health, docs) while auth is on: no scope at all."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()

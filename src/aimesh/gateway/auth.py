"""Who may call what: API keys with scopes, and a token bucket per key.

Keys are configured as sha256 digests (``gateway.keys``); a presented key is hashed and
compared with every configured digest in constant time. Routes need a scope (``infer`` or
``admin``) or none (health, metrics). No HTTP here: adapters pass the presented key and the
route's scope, and turn the errors into statuses and headers.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aimesh.config import ApiKey
from aimesh.errors import Forbidden, RateLimited, Unauthorized

__all__ = [
    "AccessControl",
    "Caller",
    "Scope",
    "TokenBucket",
    "hash_key",
    "key_from_headers",
    "retry_after",
]

Scope = Literal["infer", "admin"]


def hash_key(key: str) -> str:
    """The sha256 hex digest of a key, as ``gateway.keys[].sha256`` stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_from_headers(api_key: str | None, authorization: str | None) -> str | None:
    """The key presented as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
    if api_key:
        return api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


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


@dataclass(frozen=True, slots=True)
class Caller:
    """The holder of a key that was accepted."""

    name: str
    scopes: frozenset[str]


@dataclass(slots=True)
class _Key:
    digest: bytes
    caller: Caller
    bucket: TokenBucket | None


class AccessControl:
    """Decides, per request, whether the presented key may use a route now."""

    def __init__(
        self,
        keys: Sequence[ApiKey],
        *,
        required: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.required = required
        self._clock = clock
        now = clock()
        self._keys = [
            _Key(
                digest=bytes.fromhex(k.sha256),
                caller=Caller(k.name, frozenset(k.scopes)),
                bucket=(
                    TokenBucket(k.rate_per_s, k.burst or max(1.0, 2 * k.rate_per_s), now)
                    if k.rate_per_s
                    else None
                ),
            )
            for k in keys
        ]

    def check(self, presented: str | None, scope: Scope | None) -> Caller | None:
        """The caller, if ``presented`` may use a route needing ``scope`` now.

        Open routes (``scope`` None) and a gateway without auth pass with no caller. Raises
        :class:`Unauthorized` (no key, unknown key), :class:`Forbidden` (scope missing) or
        :class:`RateLimited` (bucket empty).
        """
        if scope is None or not self.required:
            return None
        if presented is None:
            raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found: _Key | None = None
        for key in self._keys:  # every digest is compared, so timing says nothing of which
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise Unauthorized("unknown API key")
        if scope not in found.caller.scopes:
            raise Forbidden(found.caller.name, scope)
        if found.bucket is not None:
            wait = found.bucket.take(self._clock())
            if wait > 0:
                raise RateLimited(found.caller.name, wait)
        return found.caller


def retry_after(exc: RateLimited) -> str:
    """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(exc.retry_after_s)))

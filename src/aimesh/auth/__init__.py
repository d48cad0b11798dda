"""Who is calling, and what they may do: identities and scopes.

One identity model for every service (ARCHITECTURE.md, "Identity"). An API key, the service
credential, or the local operator (when no key exists, services bind loopback only and every
caller is the operator) becomes an :class:`Identity` with a set of scopes. Routes need a
scope; the four scopes include each other as :data:`INCLUDES` says:

=========  ==============================================================================
scope      may
=========  ==============================================================================
``read``   list and show: models, versions, aliases, history, datasets, queries, jobs
``infer``  call models (``/v2`` REST and gRPC, ``?async=true``) and read its own jobs
``write``  everything ``read`` and ``infer`` may, and change things: push versions, move
           aliases, ingest, submit and cancel jobs
``admin``  everything; and manage keys, register code-running (trusted) artifacts, widen
           skops' trusted types, collect garbage, vacuum
=========  ==============================================================================

Keys (:mod:`~aimesh.auth.keys`: made, hashed, found in headers; the service credential)
are checked by a :class:`Keyring` (:mod:`~aimesh.auth.keyring`). No HTTP here: adapters
find the presented credential, ask for an identity, and turn the errors
(:class:`~aimesh.errors.Unauthorized`, :class:`~aimesh.errors.Forbidden`) into statuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from aimesh.errors import Forbidden

__all__ = [
    "ANONYMOUS",
    "IDENTITY_HEADER",
    "INCLUDES",
    "KEY_NAME_PATTERN",
    "KEY_PREFIX",
    "LOCAL_OPERATOR",
    "SCOPES",
    "SERVICE",
    "SERVICE_KEY_FILE",
    "FailedAttempts",
    "Identity",
    "KeyEntry",
    "Keyring",
    "Scope",
    "TokenBucket",
    "check_key_name",
    "expand",
    "hash_key",
    "key_from_headers",
    "new_key",
    "service_key",
]

Scope = Literal["read", "infer", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)

INCLUDES: dict[Scope, frozenset[Scope]] = {
    "read": frozenset({"read"}),
    "infer": frozenset({"infer"}),
    "write": frozenset({"read", "infer", "write"}),
    "admin": frozenset(SCOPES),
}
"""The scopes each scope grants (itself and those it includes)."""

IDENTITY_HEADER = "x-aimesh-identity"
"""The header a service sends on behalf of its caller (``name;scope,scope``): believed only
from a request that carries the service credential, ignored (never trusted) otherwise."""


def expand(scopes: Iterable[str]) -> frozenset[Scope]:
    """Every scope that ``scopes`` grant, the included ones too; unknown names are ignored."""
    granted: set[Scope] = set()
    for scope in scopes:
        if scope in INCLUDES:
            granted |= INCLUDES[scope]
    return frozenset(granted)


@dataclass(frozen=True, slots=True)
class Identity:
    """The holder of an accepted credential, with every scope it grants (already expanded)."""

    name: str
    scopes: frozenset[Scope]
    kind: Literal["key", "service", "operator"] = "key"

    @classmethod
    def of(
        cls, name: str, scopes: Iterable[str], kind: Literal["key", "service", "operator"] = "key"
    ) -> Identity:
        """An identity granted ``scopes`` and the scopes they include."""
        return cls(name, expand(scopes), kind)

    def has(self, scope: Scope) -> bool:
        """Whether this identity may do what ``scope`` allows."""
        return scope in self.scopes

    def require(self, scope: Scope) -> None:
        """Raise :class:`Forbidden` unless this identity holds ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(self.name, scope)

    def header(self) -> str:
        """This identity as :data:`IDENTITY_HEADER` carries it: ``name;scope,scope``."""
        return f"{self.name};{','.join(sorted(self.scopes))}"

    @classmethod
    def from_header(cls, value: str) -> Identity:
        """The identity a trusted service sent in :data:`IDENTITY_HEADER`."""
        name, _, scopes = value.partition(";")
        return cls.of(name.strip() or "unknown", (s.strip() for s in scopes.split(",")))


LOCAL_OPERATOR = Identity.of("operator", SCOPES, kind="operator")
"""Who calls when no key exists: services then bind loopback only, and the person at this
machine (who owns the home folder) may do everything."""


# The checks build on the identity above (imported last: they import it from here).
from aimesh.auth.keyring import (  # noqa: E402
    ANONYMOUS,
    SERVICE,
    FailedAttempts,
    KeyEntry,
    Keyring,
    TokenBucket,
)
from aimesh.auth.keys import (  # noqa: E402
    KEY_NAME_PATTERN,
    KEY_PREFIX,
    SERVICE_KEY_FILE,
    check_key_name,
    hash_key,
    key_from_headers,
    new_key,
    service_key,
)

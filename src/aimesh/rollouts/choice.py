"""Which version answers one request, under a model's traffic policy: pure and cheap.

:class:`Arms` is a policy compiled for the hot path (built once per change, asked per
request). Without a sticky key a request goes to a version at random by the weights. With
one (a header or a cookie naming the user) the choice is *weighted rendezvous hashing*:
each version scores ``weight / -ln(u)``, ``u`` a hash of the key and the version in (0, 1),
and the highest score wins. Each version wins with probability weight / total, one user
always gets the same version while the weights stand, and when weights change, users move
only towards versions that gained weight: a canary's step from 5% to 25% moves users from
the baseline to the candidate, never the other way, and a user stays on a version until it
loses weight or leaves the split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aimesh.rollouts.policy import Canary, Rollout, Shadow, Split

__all__ = ["ARM_HEADER", "Arms", "Choice", "sticky_key"]

ARM_HEADER = "x-aimesh-rollout-arm"
"""Response header naming the policy arm that answered (``baseline``, ``candidate``,
``version-4``) through the gateway."""

_TWO_64 = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one request goes: a version (a number, as text) and the arm it stands for."""

    version: str
    arm: str


@dataclass(frozen=True, slots=True)
class _Arm:
    version: str
    weight: float
    salt: bytes
    choice: Choice


class Arms:
    """A policy compiled: choose a version per request, and whether to copy it to a shadow."""

    def __init__(self, rollout: Rollout) -> None:
        self.model = rollout.model
        policy = rollout.policy
        sticky = rollout.sticky
        self.header: bytes | None = sticky.header.encode() if sticky and sticky.header else None
        self.cookie: bytes | None = sticky.cookie.encode() if sticky and sticky.cookie else None
        self.shadow: str | None = None
        self.shadow_fraction = 0.0
        if isinstance(policy, Shadow) and rollout.active:
            self.shadow = str(policy.candidate)
            self.shadow_fraction = policy.percent / 100.0
        arms: list[_Arm] = []
        for route, weight, name, version in _shares(rollout):
            if weight > 0:
                salt = str(version).encode() + b"\0"
                arms.append(_Arm(route, float(weight), salt, Choice(route, name)))
        self._arms = tuple(arms)
        self._total = sum(a.weight for a in arms)
        self.alias = policy.alias if isinstance(policy, Canary | Shadow) else None
        """The alias whose requests the policy shares (a canary) or copies (a shadow) too,
        besides the requests naming no version."""

    @property
    def splits(self) -> bool:
        """Whether requests are shared among versions at all (a shadow alone does not)."""
        return bool(self._arms)

    def versions(self) -> Sequence[str]:
        """The versions requests may go to."""
        return tuple(a.version for a in self._arms)

    def choose(self, key: bytes | None, rand: Callable[[], float]) -> Choice | None:
        """The version (or alias) for a request with sticky ``key`` (None: none was given); ``rand``
        draws in [0, 1) for requests without a key. None when the policy splits nothing."""
        arms = self._arms
        if not arms:
            return None
        if len(arms) == 1:
            return arms[0].choice
        if key is None:
            point = rand() * self._total
            for arm in arms:
                point -= arm.weight
                if point < 0:
                    return arm.choice
            return arms[-1].choice
        best = arms[0]
        best_score = -1.0
        for arm in arms:
            digest = hashlib.blake2b(arm.salt + key, digest_size=8).digest()
            unit = (int.from_bytes(digest, "big") + 0.5) / _TWO_64  # strictly inside (0, 1)
            score = arm.weight / -math.log(unit)
            if score > best_score:
                best, best_score = arm, score
        return best.choice

    def copies(self, rand: Callable[[], float]) -> bool:
        """Whether this request is copied to the shadow version."""
        return self.shadow is not None and rand() < self.shadow_fraction

    def applies_to(self, version: str | None) -> bool:
        """Whether a request naming ``version`` (None: none) is shared by the policy."""
        return version is None or version == self.alias


def _shares(rollout: Rollout) -> list[tuple[str, int, str, int]]:
    """Each arm of ``rollout``: where it routes, its weight, its name, its version.

    A canary's baseline routes to its alias (the instances following it), not to the
    version number: when the canary is over, rolled back or promoted, the alias's requests
    go where the alias is (``stable``), never to a candidate left running.
    """
    policy = rollout.policy
    if isinstance(policy, Canary):
        if not rollout.active:
            return [(policy.alias, 100, "stable", policy.baseline)]
        weight = rollout.status.weight
        return [
            (policy.alias, 100 - weight, "baseline", policy.baseline),
            (str(policy.candidate), weight, "candidate", policy.candidate),
        ]
    if isinstance(policy, Split) and rollout.active:
        return [(str(v), w, f"version-{v}", v) for v, w in sorted(policy.weights.items())]
    return []


def sticky_key(
    header: bytes | None, cookie: bytes | None, headers: Sequence[tuple[bytes, bytes]]
) -> bytes | None:
    """The user's key among request ``headers`` (lower-case names): the value of ``header``,
    or of the cookie named ``cookie``; None when the request carries neither."""
    if header is None and cookie is None:
        return None
    for name, value in headers:
        if header is not None and name == header and value:
            return value
        if cookie is not None and name == b"cookie":
            found = _cookie(value, cookie)
            if found:
                return found
    return None


def _cookie(value: bytes, name: bytes) -> bytes | None:
    for part in value.split(b";"):
        key, sep, found = part.strip().partition(b"=")
        if sep and key == name:
            return found.strip().strip(b'"')
    return None

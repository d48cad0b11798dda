"""The gateway's protocol-neutral core for model calls: which version, which instances.

REST, gRPC and async inference are adapters around :class:`ModelCore`: each reads the
model's name, the version the caller named (a number, an alias, or none) and the request's
headers, asks :meth:`ModelCore.plan` where the call goes, sends it with its own exchange
through :meth:`ModelCore.call`, and converts the answer back. The stages, in order:

1. **traffic policy** (:mod:`aimesh.gateway.traffic`): for a model with one, a request
   naming no version (or the alias a canary is for) gets the version the policy picks,
   sticky by a header or cookie when the policy says so; the plan names the arm, which
   the adapters return in the ``x-aimesh-rollout-arm`` header (metadata on gRPC). A picked
   version no instance serves is answered as if there were no policy (never an error);
2. **routing** (:class:`~aimesh.gateway.routing.Router`): the instances serving that
   version, or 404 / 503 with the reason;
3. **the call** (:func:`~aimesh.gateway.upstream.call_upstream`): an instance chosen by
   the instance policy, others tried while a request was certainly not sent.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aimesh.gateway.instances import InstancePolicy, Upstream
from aimesh.gateway.routing import Router, Target
from aimesh.gateway.traffic import TrafficTable
from aimesh.gateway.upstream import Exchange, NotSent, call_upstream
from aimesh.rollouts import sticky_key

__all__ = ["ModelCore", "Plan"]

log = logging.getLogger("aimesh.gateway")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one model call goes."""

    target: Target
    arm: str | None = None
    """The traffic policy's arm that answers (None: no policy chose the version)."""


class ModelCore:
    """Plans and runs model calls for every protocol adapter of one gateway."""

    def __init__(
        self,
        router: Router,
        policy: InstancePolicy,
        *,
        traffic: TrafficTable | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.router = router
        self.policy = policy
        self.traffic = traffic
        self._rand = rand

    async def plan(
        self, model: str, version: str | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> Plan:
        """Where a call to ``model`` naming ``version`` goes; ``headers`` (lower-case
        names) carry a sticky policy's user key. Raises what :meth:`Router.target` does."""
        arms = self.traffic.get(model) if self.traffic is not None else None
        if arms is not None and arms.applies_to(version):
            key = None
            if arms.header is not None or arms.cookie is not None:
                key = sticky_key(arms.header, arms.cookie, headers)
            choice = arms.choose(key, self._rand)
            if choice is not None:
                target = self.router.table.match(model, choice.version)
                if target is not None:
                    return Plan(target, choice.arm)
                log.debug("version %s of %s is picked but unserved", choice.version, model)
        return Plan(await self.router.target(model, version))

    async def call(
        self,
        candidates: Sequence[Upstream],
        exchange: Exchange[T],
        *,
        on_not_sent: Callable[[Upstream, NotSent], None] | None = None,
    ) -> T:
        """Run ``exchange`` on one of ``candidates`` (see :func:`call_upstream`)."""
        return await call_upstream(
            candidates, exchange, policy=self.policy, on_not_sent=on_not_sent
        )

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
3. **the call**, through the resilience layer (:class:`~aimesh.resilience.Resilience`:
   deadline, retry, the breaker of the route and version, instance ejection and
   bulkhead, in that order) when ``gateway.resilience.enabled``; else
   :func:`~aimesh.gateway.upstream.call_upstream` alone (an instance chosen by the
   instance policy, others tried while a request was certainly not sent).

A call's **deadline** is the caller's (:meth:`ModelCore.deadline`: the
``x-aimesh-deadline-ms`` header on REST, the call's own deadline on gRPC), never beyond
the gateway's upstream timeout. Each attempt's timeout is cut to what is left of it, and
the exchange passes that time on to the instance (the header, or the gRPC deadline), so
that a model service never works on a request the gateway has given up on.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from aimesh.config import Fallback
from aimesh.errors import DeadlineExceeded, UpstreamError, UpstreamTimeout
from aimesh.gateway.instances import REFUSED_PENALTY_S, InstancePolicy, Upstream
from aimesh.gateway.routing import Router, Target
from aimesh.gateway.traffic import TrafficTable
from aimesh.gateway.upstream import Exchange, NotSent, call_upstream
from aimesh.resilience import (
    DEADLINE_HEADER,
    BreakerKey,
    CallRules,
    Deadline,
    Outcome,
    Resilience,
    classify_exception,
    should_fall_back,
)
from aimesh.rollouts import sticky_key

__all__ = ["CallKind", "ModelCore", "Plan", "breakers_report", "static_answer"]

log = logging.getLogger("aimesh.gateway")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one model call goes."""

    target: Target
    arm: str | None = None
    """The traffic policy's arm that answers (None: no policy chose the version)."""
    shadow: Target | None = None
    """Where a copy of the call goes, to be compared (a shadow policy's share of calls)."""
    fallback: Fallback | None = None
    """What answers if the call fails: for a canary's candidate, its alias (the baseline),
    so that a failing candidate costs its callers nothing but the figures it earns."""


def _success(result: object) -> Outcome:
    return Outcome.SUCCESS


def _is_not_sent(exc: BaseException) -> bool:
    return isinstance(exc, NotSent)


@dataclass(frozen=True, slots=True)
class CallKind(Generic[T]):
    """How one adapter's calls are judged: made once per adapter, not per call."""

    classify: Callable[[T], Outcome] = _success
    """A result's outcome (an HTTP answer: by its status)."""
    classify_error: Callable[[BaseException], Outcome] = classify_exception
    """An exception's outcome."""
    discard: Callable[[T], Awaitable[None]] | None = None
    """Releases a failed result that is retried (a streaming body)."""


class ModelCore:
    """Plans and runs model calls for every protocol adapter of one gateway."""

    def __init__(
        self,
        router: Router,
        policy: InstancePolicy,
        *,
        call_timeout_s: float,
        traffic: TrafficTable | None = None,
        resilience: Resilience | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.policy = policy
        self.call_timeout_s = call_timeout_s
        """The longest wait for an upstream's answer (``gateway.upstream_timeout_s``)."""
        self.traffic = traffic
        self.resilience = resilience
        """Breakers, ejection, retries, bulkheads; None: calls go without them."""
        self._rand = rand
        self._clock = clock
        self._rules: dict[int, CallRules[Upstream, Any]] = {}

    async def plan(
        self, model: str, version: str | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> Plan:
        """Where a call to ``model`` naming ``version`` goes; ``headers`` (lower-case
        names) carry a sticky policy's user key. Raises what :meth:`Router.target` does."""
        arms = self.traffic.get(model) if self.traffic is not None else None
        if arms is None or not arms.applies_to(version):
            return Plan(await self.router.target(model, version))
        shadow = None
        if arms.shadow is not None and arms.copies(self._rand):
            shadow = self.router.table.match(model, arms.shadow)
        if arms.splits:
            key = None
            if arms.header is not None or arms.cookie is not None:
                key = sticky_key(arms.header, arms.cookie, headers)
            choice = arms.choose(key, self._rand)
            if choice is not None:
                target = self.router.table.match(model, choice.version)
                if target is not None:
                    fallback = None
                    if choice.arm == "candidate" and arms.alias is not None:
                        fallback = _to_alias(arms.alias)
                    return Plan(target, choice.arm, shadow, fallback)
                log.debug("version %s of %s is picked but unserved", choice.version, model)
        return Plan(await self.router.target(model, version), None, shadow)

    def fallback_for(self, model: str, plan: Plan | None = None) -> Fallback | None:
        """The fallback of a call to ``model``: the plan's own (a canary's candidate falls
        back to the baseline), else the model's (``gateway.resilience.routes``), if any.
        Without the resilience layer there is none."""
        if self.resilience is None:
            return None
        if plan is not None and plan.fallback is not None:
            return plan.fallback
        return self.resilience.settings.fallback_for(model)

    async def fallback_target(self, model: str, fallback: Fallback) -> Target:
        """Where ``fallback`` (another version, or another model) of a call to ``model``
        goes: straight there, no traffic policy picks again. Raises what
        :meth:`Router.target` does; a static fallback has no target."""
        return await self.router.target(fallback.model or model, fallback.version)

    def falls_back(
        self,
        deadline: Deadline | None,
        error: BaseException | None = None,
        kind: CallKind[Any] | None = None,
    ) -> bool:
        """Whether a failed call that has a fallback (:meth:`fallback_for`) goes to it: its
        caller's ``deadline`` has not passed (a fallback's answer would reach no one), and
        the failure is the upstream's: an ``error`` that :func:`should_fall_back` takes,
        judged as the adapter's ``kind`` judges errors, or, without one, a failed answer
        (a 5xx)."""
        if deadline is not None and deadline.expired(self._clock()):
            return False
        return error is None or should_fall_back(
            error, kind.classify_error if kind is not None else classify_exception
        )

    def deadline(
        self, header: str | bytes | None = None, left_s: float | None = None
    ) -> Deadline | None:
        """The deadline of a call whose caller set one: in the ``x-aimesh-deadline-ms``
        ``header`` (REST), or as the time ``left_s`` of its own deadline (gRPC); never beyond
        the gateway's upstream timeout. None when the caller set none (each attempt then
        has the route's timeout). Raises :class:`~aimesh.errors.InvalidRequest` for a
        header that is not whole milliseconds, :class:`DeadlineExceeded` for a deadline
        passed already (no call is made for it, nor counted against a version)."""
        if header is None and left_s is None:
            return None
        now = self._clock()
        own = Deadline.after(self.call_timeout_s, now)
        if header is not None:
            deadline = Deadline.from_header(header, now)
        else:
            assert left_s is not None
            deadline = Deadline.after(left_s, now)
        if deadline.expired(now):
            raise DeadlineExceeded("the request's deadline had passed when it came")
        return deadline.earliest(own)

    async def call(
        self,
        route: str,
        target: Target,
        exchange: Exchange[T],
        *,
        kind: CallKind[T] | None = None,
        on_not_sent: Callable[[Upstream, NotSent], None] | None = None,
        deadline: Deadline | None = None,
        idempotent: bool = True,
    ) -> T:
        """Run ``exchange`` on one of ``target``'s instances, for ``route`` (``infer``,
        ``metadata``...): through the resilience layer when there is one, judged as
        ``kind`` says; each attempt within the route's timeout, cut to what is left of
        ``deadline``. Raises :class:`UpstreamError` when no instance could be reached,
        :class:`~aimesh.errors.CircuitOpen` or :class:`~aimesh.errors.Overloaded` when the
        breaker or every bulkhead refused, :class:`DeadlineExceeded` when the deadline
        passed before an answer came, and what the exchange raised."""
        resilience = self.resilience
        clock = self._clock
        if deadline is not None:
            exchange = _within(exchange, deadline, clock)
        if resilience is None:
            return await call_upstream(
                target.candidates, exchange, policy=self.policy, timeout_s=self.call_timeout_s,
                deadline=deadline, on_not_sent=on_not_sent, clock=clock,
            )  # fmt: skip
        key = BreakerKey(route, target.model, target.served or "")

        async def attempt(upstream: Upstream, timeout_s: float) -> T:
            upstream.outstanding += 1
            try:
                return await exchange(upstream, timeout_s)
            except NotSent as exc:
                upstream.refused_until = clock() + REFUSED_PENALTY_S
                if on_not_sent is not None:
                    on_not_sent(upstream, exc)
                raise
            finally:
                upstream.outstanding -= 1

        try:
            return await resilience.call(
                key, target.candidates, attempt, self._rules_for(kind),
                deadline=deadline, idempotent=idempotent,
            )  # fmt: skip
        except NotSent as exc:
            # Which instances (internal addresses) refused, and how, is for the log.
            raise UpstreamError(
                f"no instance could be reached ({len(target.candidates)} tried)"
            ) from exc

    def _rules_for(self, kind: CallKind[T] | None) -> CallRules[Upstream, T]:
        found = self._rules.get(id(kind))
        if found is None:
            kind = kind or CallKind()
            found = self._rules[id(kind)] = CallRules(
                instance_key=_instance_key,
                choose=self.policy.choose,
                classify=kind.classify,
                classify_error=kind.classify_error,
                not_sent=_is_not_sent,
                discard=kind.discard,
            )
        return found


def _within(exchange: Exchange[T], deadline: Deadline, clock: Callable[[], float]) -> Exchange[T]:
    """``exchange``, its timeout said as the deadline passing when the deadline cut it."""

    async def timed(upstream: Upstream, timeout_s: float) -> T:
        cut = deadline.at - clock() <= timeout_s
        try:
            return await exchange(upstream, timeout_s)
        except UpstreamTimeout as exc:
            if not cut:
                raise
            raise DeadlineExceeded(
                f"no answer within the request's deadline ({DEADLINE_HEADER})"
            ) from exc

    return timed


@functools.cache
def _to_alias(alias: str) -> Fallback:
    """The fallback to ``alias`` (one object per alias: not validated again per call)."""
    return Fallback(version=alias)


def _instance_key(upstream: Upstream) -> str:
    return upstream.key


def breakers_report(resilience: Resilience | None) -> bytes:
    """What ``GET /breakers`` answers: every breaker and every instance in the ejection
    table, each with its state, counts, and ``for_s``: how long an open breaker or an
    ejection lasts yet (the monotonic ``until`` means nothing to another process)."""
    if resilience is None:
        return json.dumps({"enabled": False, "breakers": [], "instances": []}).encode()
    now = time.monotonic()
    rows = {
        "breakers": [_row(asdict(b), now) for b in resilience.breakers.snapshot(now)],
        "instances": [_row(asdict(e), now) for e in resilience.outliers.snapshot(now)],
    }
    return json.dumps({"enabled": True, **rows}).encode()


def _row(fields: dict[str, Any], now: float) -> dict[str, Any]:
    until = fields.pop("until", None)
    fields["for_s"] = None if until is None else round(max(0.0, until - now), 3)
    return {k: str(v) if hasattr(v, "value") else v for k, v in fields.items()}


def static_answer(model: str, fallback: Fallback) -> bytes:
    """A static fallback's answer as an inference response (REST JSON; gRPC converts it)."""
    outputs = [output.model_dump() for output in fallback.outputs or ()]
    return json.dumps(
        {"model_name": model, "model_version": "fallback", "outputs": outputs}
    ).encode()

"""The traffic stage without I/O: the table of policies, and the core's plan per request."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from test_gateway_routing import Catalog, instance

from aimesh.errors import StoreUnavailable
from aimesh.gateway import LeastOutstanding, Router, RoutingTable
from aimesh.gateway.core import ModelCore
from aimesh.gateway.traffic import TrafficTable
from aimesh.rollouts import Canary, Rollout, RolloutStatus, Shadow, Split, Sticky


def _split(**weights: int) -> Rollout:
    return Rollout(
        model="fraud",
        policy=Split(
            weights={int(v[1:]): w for v, w in weights.items()}, sticky=Sticky(header="x-user")
        ),
    )


class Stored:
    """Policies as a registry would hold them: model -> (revision, rollout)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[int, Rollout]] = {}
        self.down = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, model: str) -> tuple[int, Rollout] | None:
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("registry down")
        return self.records.get(model)

    async def fetch_all(self) -> list[tuple[int, Rollout]]:
        return list(self.records.values())


async def _the_table_loads_follows_events_and_never_goes_back() -> None:
    stored = Stored()
    table = TrafficTable(stored.fetch, stored.fetch_all)
    stored.records["fraud"] = (3, _split(v1=50, v2=50))
    await table.load()
    assert table.get("fraud") is not None and table.get("fraud").versions() == ("1", "2")  # type: ignore[union-attr]
    # An older revision never replaces a newer one; the same revision changes nothing.
    assert not table.apply(2, _split(v1=90, v2=10), "fraud")
    assert not table.apply(3, _split(v1=90, v2=10), "fraud")
    # An event: the model's record is fetched again.
    stored.records["fraud"] = (4, _split(v1=10, v3=90))
    table.refresh("fraud")
    await asyncio.gather(*table._running.values())
    assert table.get("fraud").versions() == ("1", "3")  # type: ignore[union-attr]
    # Refreshes asked for while one runs run again after it, not beside it.
    stored.gate = asyncio.Event()
    table.refresh("fraud")
    stored.records["fraud"] = (5, _split(v2=100, v3=0))
    table.refresh("fraud")
    assert len(table._running) == 1
    stored.gate.set()
    while table._running:
        await asyncio.gather(*table._running.values())
    assert table.get("fraud").versions() == ("2",)  # type: ignore[union-attr]
    # A registry that cannot be asked leaves the policy as it was.
    stored.down = True
    table.refresh("fraud")
    await asyncio.gather(*table._running.values())
    assert table.get("fraud") is not None
    # Deleted: the policy goes.
    stored.down = False
    del stored.records["fraud"]
    await table.load()
    assert table.get("fraud") is None
    done = Rollout(
        model="fraud",
        policy=Canary(baseline=1, candidate=2),
        status=RolloutStatus(state="rolled_back", weight=25),
    )
    # A finished canary sends its requests where its alias is, never to the candidate.
    assert table.apply(6, done, "fraud")
    arms = table.get("fraud")
    assert arms is not None and arms.versions() == ("champion",)
    assert arms.choose(b"anyone", lambda: 0.5).arm == "stable"  # type: ignore[union-attr]


def test_the_table_loads_follows_events_and_never_goes_back() -> None:
    asyncio.run(_the_table_loads_follows_events_and_never_goes_back())


def _router() -> Router:
    table = RoutingTable()
    for name, version in [("a1", "1"), ("a2", "2"), ("b1", "1")]:
        table.put(
            instance(name, version=version, name="fraud" if name[0] == "a" else "other"),
            0.0,
        )
    table.put(instance("a3", version="1", ref="fraud@champion"), 0.0)
    return Router(table, Catalog({"fraud": {"1": "1", "2": "2", "champion": "1"}, "other": {}}))


async def _the_plan_follows_the_policy_sticky_per_user() -> None:
    stored = Stored()
    traffic = TrafficTable(stored.fetch, stored.fetch_all)
    core = ModelCore(_router(), LeastOutstanding(), call_timeout_s=30.0, traffic=traffic)
    stored.records["fraud"] = (1, _split(v1=50, v2=50))
    await traffic.load()
    chosen: dict[int, set[str | None]] = {}
    for _ in range(3):
        for user in range(200):
            plan = await core.plan("fraud", None, [(b"x-user", str(user).encode())])
            chosen.setdefault(user, set()).add(plan.target.version)
            assert plan.arm == f"version-{plan.target.version}"
    assert all(len(v) == 1 for v in chosen.values())
    shares = Counter(next(iter(v)) for v in chosen.values())
    assert set(shares) == {"1", "2"} and abs(shares["1"] - 100) < 30
    # A version named by the caller is never shared; other models are untouched.
    named = await core.plan("fraud", "2", [(b"x-user", b"1")])
    assert (named.target.version, named.arm) == ("2", None)
    other = await core.plan("other", None, [])
    assert other.arm is None and {u.name for u in other.target.candidates} == {"other"}


def test_the_plan_follows_the_policy_sticky_per_user() -> None:
    asyncio.run(_the_plan_follows_the_policy_sticky_per_user())


async def _a_canary_shares_its_alias_and_an_unserved_pick_is_answered_as_before() -> None:
    stored = Stored()
    traffic = TrafficTable(stored.fetch, stored.fetch_all)
    core = ModelCore(
        _router(), LeastOutstanding(), call_timeout_s=30.0, traffic=traffic, rand=lambda: 0.0
    )
    canary = Canary(baseline=1, candidate=2)
    stored.records["fraud"] = (
        1,
        Rollout(model="fraud", policy=canary, status=RolloutStatus(weight=100)),
    )
    await traffic.load()
    plan = await core.plan("fraud", "champion", [])
    assert (plan.target.version, plan.arm) == ("2", "candidate")
    # The candidate unserved: the alias's own instances answer, no arm claimed.
    stored.records["fraud"] = (
        2,
        Rollout(
            model="fraud", policy=Canary(baseline=1, candidate=7), status=RolloutStatus(weight=100)
        ),
    )
    await traffic.load()
    plan = await core.plan("fraud", "champion", [])
    assert plan.arm is None and {u.key for u in plan.target.candidates} == {instance("a3").key}


def test_a_canary_shares_its_alias_and_an_unserved_pick_is_answered_as_before() -> None:
    asyncio.run(_a_canary_shares_its_alias_and_an_unserved_pick_is_answered_as_before())


async def _a_shadow_alone_changes_no_route(policy: Shadow) -> None:
    stored = Stored()
    traffic = TrafficTable(stored.fetch, stored.fetch_all)
    core = ModelCore(_router(), LeastOutstanding(), call_timeout_s=30.0, traffic=traffic)
    stored.records["fraud"] = (1, Rollout(model="fraud", policy=policy))
    await traffic.load()
    plan = await core.plan("fraud", None, [])
    assert plan.arm is None and len(plan.target.candidates) == 3


@pytest.mark.parametrize("policy", [Shadow(candidate=2)])
def test_a_shadow_alone_changes_no_route(policy: Shadow) -> None:
    asyncio.run(_a_shadow_alone_changes_no_route(policy))

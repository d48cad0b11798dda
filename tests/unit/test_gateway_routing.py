"""Routing without I/O: the table fed by discovery records, the router, the instance policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from aimesh.bus import ServiceInstance
from aimesh.errors import (
    AimeshError,
    AliasNotFound,
    DeadlineExceeded,
    ModelNotFound,
    NoInstance,
    StoreUnavailable,
    UpstreamError,
    VersionNotFound,
)
from aimesh.gateway import LeastOutstanding, NotSent, Router, RoutingTable, Upstream, call_upstream
from aimesh.resilience import Deadline

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def instance(
    id: str,
    *,
    name: str = "fraud",
    version: str = "1",
    ref: str | None = None,
    port: int | None = None,
    kind: str = "model",
    beat: float = 0.0,
) -> ServiceInstance:
    port = port or 9000 + int(id[-1])
    return ServiceInstance(
        id=id,
        kind=kind,  # type: ignore[arg-type]
        name=name,
        model=name if kind == "model" else None,
        version=version if kind == "model" else None,
        ref=ref or (f"{name}@{version}" if kind == "model" else None),
        rest_url=f"http://127.0.0.1:{port}",
        grpc_address=f"127.0.0.1:{port + 100}" if kind == "model" else None,
        started=NOW,
        heartbeat=NOW + timedelta(seconds=beat),
    )


def table_of(*instances: ServiceInstance) -> tuple[RoutingTable, list[Upstream]]:
    removed: list[Upstream] = []
    table = RoutingTable(on_removed=removed.append)
    for i in instances:
        table.put(i, now=0.0)
    return table, removed


def ports(target: object) -> list[int]:
    assert target is not None
    return sorted(u.rest[1] for u in target.candidates if u.rest)  # type: ignore[attr-defined]


TABLE = table_of(
    instance("a1", version="1", ref="fraud@champion"),
    instance("a2", version="1"),
    instance("a3", version="2", ref="fraud@latest"),
    instance("b4", name="churn", version="7"),
)[0]


@pytest.mark.parametrize(
    ("name", "version", "expected_ports", "named_version"),
    [
        ("fraud", None, [9001, 9002, 9003], None),
        ("fraud", "1", [9001, 9002], "1"),
        ("fraud", "2", [9003], "2"),
        ("fraud", "champion", [9001], None),  # followers of the alias serve what it names
        ("fraud", "latest", [9003], None),
        ("fraud", "3", None, None),
        ("fraud", "canary", None, None),  # nobody follows it: the router asks the registry
        ("churn", None, [9004], None),
        ("nope", None, None, None),
    ],
)
def test_match_by_model_version_and_alias(
    name: str, version: str | None, expected_ports: list[int] | None, named_version: str | None
) -> None:
    target = TABLE.match(name, version)
    if expected_ports is None:
        assert target is None
    else:
        assert target is not None
        assert ports(target) == expected_ports and target.version == named_version


def test_a_heartbeat_keeps_the_upstream_and_its_count() -> None:
    table, _ = table_of(instance("a1"))
    target = table.match("fraud", None)
    assert target is not None
    target.candidates[0].outstanding = 3
    generation = table.generation
    table.put(instance("a1"), now=1.0)
    again = table.match("fraud", None)
    assert again is not None and again.candidates[0].outstanding == 3
    assert table.generation == generation


def test_keys_at_one_place_are_one_upstream_that_leaves_with_the_last_key() -> None:
    # A process that re-registers under a new id stays one instance.
    table, removed = table_of(instance("a1"), instance("x1", version="1"))
    assert ports(table.match("fraud", None)) == [9001]
    table.remove("model.fraud.a1")
    assert ports(table.match("fraud", None)) == [9001] and removed == []
    table.remove("model.fraud.x1")
    assert table.match("fraud", None) is None
    assert [u.rest for u in removed] == [("127.0.0.1", 9001)]


def test_the_newest_record_at_a_place_says_the_version() -> None:
    table, removed = table_of(instance("a1", version="1", ref="fraud@champion"))
    table.put(instance("a1", version="2", ref="fraud@champion", beat=2), now=1.0)
    assert table.match("fraud", "1") is None
    assert ports(table.match("fraud", "2")) == [9001]
    # An older record of the same place, under another key, arriving late changes nothing.
    table.put(instance("x1", version="1", ref="fraud@champion", beat=1), now=2.0)
    assert ports(table.match("fraud", "2")) == [9001] and table.match("fraud", "1") is None
    assert removed == []


def test_keys_not_refreshed_expire_unless_the_bus_was_away() -> None:
    table, removed = table_of(instance("a1"), instance("a2"))  # both seen at 0
    table.put(instance("a2"), now=10.0)
    table.expire(now=13.0, older_than_s=12.0)
    assert ports(table.match("fraud", None)) == [9002]
    table.touch_all(now=30.0)  # the bus came back after an outage: silence was not death
    table.expire(now=40.0, older_than_s=12.0)
    assert ports(table.match("fraud", None)) == [9002]
    table.expire(now=43.0, older_than_s=12.0)
    assert table.match("fraud", None) is None and len(removed) == 2


def test_services_are_found_by_name_and_models_are_not() -> None:
    table, _ = table_of(
        instance("r1", kind="registry", name="registry", port=8101),
        instance("l1", kind="lake", name="lake", port=8201),
        instance("g1", kind="gateway", name="gateway", port=8081),
        instance("a1"),
    )
    assert [u.rest for u in table.services("registry")] == [("127.0.0.1", 8101)]
    assert [u.rest for u in table.services("lake")] == [("127.0.0.1", 8201)]
    assert table.services("gateway") == () and table.services("fraud") == ()


def test_a_service_is_also_found_under_the_apis_it_announces() -> None:
    """The registry names each record kind's plural: /api/<plural> goes to it, and the
    merged document asks it once; a new announcement replaces the old, leaving takes all."""
    announced = msgspec.structs.replace(
        instance("r1", kind="registry", name="registry", port=8101), apis=("rollouts", "pipes")
    )
    table, removed = table_of(announced, instance("l1", kind="lake", name="lake", port=8201))
    for name in ("registry", "rollouts", "pipes"):
        assert [u.rest for u in table.services(name)] == [("127.0.0.1", 8101)], name
    assert set(table.api_services()) == {"registry", "lake"}
    fewer = msgspec.structs.replace(announced, apis=("rollouts",), heartbeat=NOW + timedelta(1))
    table.put(fewer, now=1.0)  # a restarted registry that defines fewer kinds
    assert table.services("pipes") == () and len(table.services("rollouts")) == 1
    table.remove(fewer.key)
    assert table.services("registry") == table.services("rollouts") == ()
    assert len(removed) == 2


class Catalog:
    """What a registry would answer, in memory: model -> {ref: version number}."""

    def __init__(self, models: dict[str, dict[str, str]], *, down: bool = False) -> None:
        self.models = models
        self.down = down
        self.asked: list[tuple[str, str | None]] = []

    async def lookup(self, name: str, ref: str | None) -> str | None:
        self.asked.append((name, ref))
        if self.down:
            raise StoreUnavailable("registry down")
        if name not in self.models:
            raise ModelNotFound(f"no model named {name!r}")
        if ref is None:
            return None
        refs = self.models[name]
        if ref not in refs:
            raise (VersionNotFound if ref.isdigit() else AliasNotFound)(f"no {ref}")
        return refs[ref]


CATALOG = {"fraud": {"1": "1", "2": "2", "3": "3", "canary": "2", "next": "3"}, "ghost": {}}


@pytest.mark.parametrize(
    ("name", "version", "outcome"),
    [
        ("fraud", "1", [9001, 9002]),
        ("fraud", "canary", [9003]),  # resolved by the registry, then routed by number
        ("fraud", "3", "no_instance"),
        ("fraud", "next", "no_instance"),
        ("fraud", "9", "version_not_found"),
        ("fraud", "nosuch", "alias_not_found"),
        ("ghost", None, "no_instance"),
        ("nope", None, "model_not_found"),
        ("a/b", None, "model_not_found"),  # not even a name: the registry is not asked
        ("fraud", "\x03", "version_not_found"),
    ],
)
def test_the_router_says_404_for_the_unknown_and_503_for_the_unserved(
    name: str, version: str | None, outcome: list[int] | str
) -> None:
    router = Router(TABLE, Catalog(CATALOG))
    if isinstance(outcome, list):
        assert ports(asyncio.run(router.target(name, version))) == outcome
    else:
        with pytest.raises(AimeshError) as caught:
            asyncio.run(router.target(name, version))
        assert caught.value.code == outcome


def test_without_a_registry_an_unserved_model_is_503_not_404() -> None:
    catalog = Catalog(CATALOG, down=True)
    with pytest.raises(NoInstance, match="cannot be asked"):
        asyncio.run(Router(TABLE, catalog).target("nope", None))
    asyncio.run(Router(TABLE, catalog).target("fraud", None))
    assert catalog.asked == [("nope", None)]  # a served model never reaches the registry


def ups(*outstanding: int, refused: tuple[int, ...] = ()) -> list[Upstream]:
    return [
        Upstream(
            key=f"k{i}",
            kind="model",
            name="m",
            outstanding=n,
            refused_until=100.0 if i in refused else 0.0,
            label=f"u{i}",
        )
        for i, n in enumerate(outstanding)
    ]


@pytest.mark.parametrize(
    ("outstanding", "refused", "expected"),
    [
        ((0,), (), {"u0"}),
        ((3, 1, 2), (), {"u1"}),
        ((3, 1, 2), (1,), {"u2"}),  # refused recently: passed over
        ((3, 1, 2), (0, 1, 2), {"u1"}),  # all refused: the least loaded anyway
        ((2, 0, 0), (), {"u1", "u2"}),
    ],
)
def test_least_outstanding_choices(
    outstanding: tuple[int, ...], refused: tuple[int, ...], expected: set[str]
) -> None:
    assert LeastOutstanding().choose(ups(*outstanding, refused=refused), now=50.0).label in expected


def test_ties_take_turns_so_sequential_traffic_spreads() -> None:
    policy, candidates = LeastOutstanding(), ups(0, 0, 0)
    chosen = [policy.choose(candidates, now=0.0).label for _ in range(9)]
    assert {label: chosen.count(label) for label in set(chosen)} == {"u0": 3, "u1": 3, "u2": 3}


def test_call_upstream_moves_on_while_not_sent_and_counts_outstanding() -> None:
    candidates = ups(0, 0, 0)
    tried: list[str] = []
    skipped: list[str] = []

    async def exchange(upstream: Upstream, timeout_s: float) -> str:
        tried.append(upstream.label)
        assert upstream.outstanding == 1 and timeout_s == 30.0
        if len(tried) < 3:
            raise NotSent("refused")
        return upstream.label

    answer = asyncio.run(
        call_upstream(
            candidates,
            exchange,
            policy=LeastOutstanding(),
            timeout_s=30.0,
            on_not_sent=lambda u, _: skipped.append(u.label),
            clock=lambda: 10.0,
        )
    )
    assert answer == tried[-1] and len(set(tried)) == 3 and skipped == tried[:2]
    assert [u.outstanding for u in candidates] == [0, 0, 0]
    assert sorted(u.refused_until for u in candidates) == [0.0, 15.0, 15.0]


def test_call_upstream_gives_up_when_no_instance_takes_it_and_passes_other_errors() -> None:
    async def refused(upstream: Upstream, timeout_s: float) -> str:
        raise NotSent("refused")

    with pytest.raises(UpstreamError, match="no instance could be reached"):
        asyncio.run(call_upstream(ups(0, 0), refused, policy=LeastOutstanding(), timeout_s=1.0))

    calls: list[str] = []

    async def broken(upstream: Upstream, timeout_s: float) -> str:
        calls.append(upstream.label)
        raise UpstreamError("reset mid-answer")  # it may have run: never sent again

    with pytest.raises(UpstreamError, match="reset"):
        asyncio.run(call_upstream(ups(0, 0), broken, policy=LeastOutstanding(), timeout_s=1.0))
    assert len(calls) == 1


def test_call_upstream_cuts_each_timeout_to_the_deadline_and_sends_none_past_it() -> None:
    now = [10.0]
    timeouts: list[float] = []

    async def exchange(upstream: Upstream, timeout_s: float) -> str:
        timeouts.append(timeout_s)
        now[0] += 0.5  # the refusal took half a second
        if len(timeouts) == 1:
            raise NotSent("refused")
        return upstream.label

    def call(deadline: Deadline) -> str:
        calling = call_upstream(
            ups(0, 0), exchange, policy=LeastOutstanding(), timeout_s=30.0,
            deadline=deadline, clock=lambda: now[0],
        )  # fmt: skip
        return asyncio.run(calling)

    call(Deadline(11.25))
    assert timeouts == [1.25, 0.75]  # what is left of the deadline, at each attempt
    timeouts.clear()
    with pytest.raises(DeadlineExceeded):
        call(Deadline(now[0]))
    assert timeouts == []  # nothing sent once it has passed

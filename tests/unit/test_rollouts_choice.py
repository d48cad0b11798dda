"""Traffic policies as data, and the choice of a version per request."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from aimesh.errors import RolloutStateConflict
from aimesh.rollouts import (
    ACTIONS,
    Arms,
    Canary,
    Decision,
    Policy,
    Rollout,
    RolloutStatus,
    Shadow,
    Split,
    Sticky,
    abort,
    pause,
    promote,
    resume,
    started,
    sticky_key,
)

POLICY = TypeAdapter(Policy)


def _canary(weight: int, state: str = "running", **kw: object) -> Rollout:
    policy = Canary(baseline=4, candidate=5, **kw)  # type: ignore[arg-type]
    return Rollout(model="fraud", policy=policy, status=RolloutStatus(state=state, weight=weight))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"type": "split", "weights": {"4": 60, "5": 50}}, "sum to 110"),
        ({"type": "split", "weights": {"4": 100}}, "at least 2"),
        ({"type": "split", "weights": {"0": 50, "5": 50}}, "not a version number"),
        ({"type": "split", "weights": {"4": 150, "5": -50}}, "within 0..100"),
        ({"type": "split", "weights": {"x": 50, "5": 50}}, "valid integer"),
        ({"type": "canary", "baseline": 4, "candidate": 4}, "the candidate is the baseline"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "steps": [5, 5, 100]}, "increase"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "steps": [5, 50]}, "last step"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "steps": []}, "at least 1"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "max_error_rate": 2}, "less than"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "interval_s": 0}, "greater than"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "alias": "1x"}, "pattern"),
        ({"type": "canary", "baseline": 4, "candidate": 5, "surprise": 1}, "Extra inputs"),
        ({"type": "shadow", "candidate": 6, "percent": 0}, "greater than"),
        ({"type": "rainbow", "candidate": 6}, "does not match any of the expected tags"),
        ({"type": "split", "weights": {"4": 50, "5": 50}, "sticky": {}}, "exactly one"),
        (
            {"type": "split", "weights": {"4": 50, "5": 50}, "sticky": {"header": "a b"}},
            "pattern",
        ),
    ],
)
def test_a_policy_that_cannot_work_is_refused_and_says_why(body: object, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        POLICY.validate_python(body)


def test_a_policy_round_trips_through_json() -> None:
    rollout = _canary(25, sticky=Sticky(header="X-User-Id"))
    stored = rollout.model_dump_json()
    assert Rollout.model_validate_json(stored) == rollout
    assert rollout.sticky == Sticky(header="x-user-id")  # header names compare lower case


def test_weights_as_things_stand() -> None:
    assert _canary(0).weights() == {4: 100}
    assert _canary(25).weights() == {4: 75, 5: 25}
    assert _canary(100).weights() == {5: 100}
    assert _canary(25, "paused").weights() == {4: 75, 5: 25}  # paused: holds its step
    for state in ("promoted", "rolled_back", "aborted"):
        assert _canary(25, state).weights() == {}  # over: routes nothing
    split = Rollout(model="m", policy=Split(weights={1: 30, 2: 0, 3: 70}))
    assert split.weights() == {1: 30, 3: 70}
    assert Rollout(model="m", policy=Shadow(candidate=3)).weights() == {}


def test_a_decision_is_kept_with_the_latest_ones() -> None:
    status = RolloutStatus()
    for step in range(25):
        decision = Decision(at=datetime.now(UTC), action="step", step=step, weight=step)
        status = status.deciding(decision, step=step)
    assert len(status.decisions) == 20
    assert (status.step, status.weight, status.decisions[-1].step) == (24, 24, 24)


def test_random_choices_follow_the_weights() -> None:
    arms = Arms(Rollout(model="m", policy=Split(weights={1: 20, 2: 80})))
    rng = random.Random(7)
    counts = Counter(arms.choose(None, rng.random).version for _ in range(20_000))  # type: ignore[union-attr]
    assert abs(counts["1"] / 20_000 - 0.2) < 0.02


def test_sticky_users_keep_their_version_and_follow_the_weights() -> None:
    arms = Arms(
        Rollout(model="m", policy=Split(weights={1: 50, 2: 50}, sticky=Sticky(header="x-user-id")))
    )
    rng = random.Random(1)
    seen: dict[bytes, set[str]] = {}
    for _ in range(10):
        for user in range(1000):
            key = f"user-{user}".encode()
            seen.setdefault(key, set()).add(arms.choose(key, rng.random).version)  # type: ignore[union-attr]
    assert all(len(versions) == 1 for versions in seen.values())
    share = sum(1 for v in seen.values() if v == {"1"}) / len(seen)
    assert abs(share - 0.5) < 0.06


@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=1, max_value=98),
    st.integers(min_value=1, max_value=98),
    st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=200, unique=True),
)
def test_as_a_canary_grows_users_move_only_to_the_candidate(
    before: int, after: int, users: list[bytes]
) -> None:
    low, high = sorted((before, after))
    smaller, larger = Arms(_canary(low)), Arms(_canary(high))
    for user in users:
        was = smaller.choose(user, random.random)
        now = larger.choose(user, random.random)
        assert was is not None and now is not None
        if was.arm == "candidate":
            assert now.arm == "candidate"


def test_arms_are_named_for_the_policy() -> None:
    canary = Arms(_canary(50))
    chosen = {canary.choose(bytes([i]), random.random) for i in range(64)}
    assert {(c.version, c.arm) for c in chosen if c} == {
        ("champion", "baseline"),  # the baseline is reached through its alias
        ("5", "candidate"),
    }
    for state in ("promoted", "rolled_back", "aborted"):
        over = Arms(_canary(50, state))
        assert over.choose(b"u", random.random) == over.choose(None, random.random)
        assert over.versions() == ("champion",)
    split = Arms(Rollout(model="m", policy=Split(weights={3: 50, 4: 50})))
    assert split.choose(None, lambda: 0.9).arm == "version-4"  # type: ignore[union-attr]
    assert canary.applies_to(None) and canary.applies_to("champion")
    assert not canary.applies_to("5") and not split.applies_to("champion")


def test_a_shadow_copies_its_share_and_splits_nothing() -> None:
    arms = Arms(Rollout(model="m", policy=Shadow(candidate=6, percent=25)))
    assert not arms.splits and arms.choose(b"u", random.random) is None
    rng = random.Random(3)
    copied = sum(arms.copies(rng.random) for _ in range(10_000))
    assert abs(copied / 10_000 - 0.25) < 0.02
    over = Rollout(model="m", policy=Shadow(candidate=6), status=RolloutStatus(state="aborted"))
    assert not Arms(over).copies(lambda: 0.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"x-user-id", b"42")], b"42"),
        ([(b"cookie", b'a=1; uid="7"; b=2')], b"7"),
        ([(b"cookie", b"a=1")], None),
        ([(b"x-user-id", b"")], None),
        ([], None),
    ],
)
def test_the_sticky_key_is_read_from_a_header_or_a_cookie(
    headers: list[tuple[bytes, bytes]], expected: bytes | None
) -> None:
    assert sticky_key(b"x-user-id" if headers[:1] and headers[0][0] != b"cookie" else None,
                      b"uid", headers) == expected  # fmt: skip


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_operator_actions_move_a_canary_and_refuse_what_its_state_forbids() -> None:
    rollout = started("fraud", Canary(baseline=4, candidate=5), "alice", NOW)
    assert (rollout.status.state, rollout.status.weight, rollout.status.step_started) == (
        "running", 5, NOW,
    )  # fmt: skip
    assert rollout.status.decisions[-1].actor == "alice"
    paused = pause(rollout, "bob", NOW)
    assert (paused.status.state, paused.status.weight) == ("paused", 5)
    with pytest.raises(RolloutStateConflict, match="it is paused"):
        pause(paused, "bob", NOW)
    later = NOW + timedelta(minutes=5)
    resumed = resume(paused, "bob", later)
    assert (resumed.status.state, resumed.status.step_started) == ("running", later)
    promoted = promote(resumed, "carol", later)
    assert (promoted.status.state, promoted.status.weight) == ("promoted", 100)
    for action in ACTIONS.values():
        with pytest.raises(RolloutStateConflict, match="it is over"):
            action(promoted, "dave", later)
    aborted = abort(rollout, "erin", NOW)
    assert (aborted.status.state, aborted.status.weight) == ("aborted", 0)
    assert [d.action for d in promoted.status.decisions] == [
        "started", "paused", "resumed", "promoted",
    ]  # fmt: skip


def test_only_a_canary_pauses_or_promotes_and_any_policy_aborts() -> None:
    split = started("m", Split(weights={1: 50, 2: 50}), "alice", NOW)
    assert split.status.weight == 0 and split.weights() == {1: 50, 2: 50}
    for action in (pause, resume, promote):
        with pytest.raises(RolloutStateConflict, match="only a canary"):
            action(split, "bob", NOW)
    assert abort(split, "bob", NOW).weights() == {}

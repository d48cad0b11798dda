"""API keys, scopes and token buckets, with a fake clock."""

from __future__ import annotations

import pytest

from aimesh.config import ApiKey
from aimesh.errors import AimeshError, RateLimited
from aimesh.gateway import AccessControl, TokenBucket, hash_key, key_from_headers
from aimesh.gateway.auth import retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "burst", "taps", "expected"),
    [
        # taps: seconds after start; expected: 0 (allowed) or the wait until a token
        (1.0, 2, [0, 0, 0], [0, 0, 1.0]),
        (1.0, 2, [0, 0, 0.5], [0, 0, 0.5]),
        (1.0, 2, [0, 0, 1.0], [0, 0, 0]),
        (10.0, 1, [0, 0, 0.05, 0.1], [0, 0.1, 0.05, 0]),
        (2.0, 3, [0, 0, 0, 0, 10, 10, 10, 10], [0, 0, 0, 0.5, 0, 0, 0, 0.5]),  # never beyond burst
    ],
)
def test_token_bucket(rate: float, burst: int, taps: list[float], expected: list[float]) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    assert [round(bucket.take(now=t), 6) for t in taps] == expected


def test_a_refused_request_spends_nothing() -> None:
    bucket = TokenBucket(1.0, 1, now=0.0)
    assert bucket.take(0.0) == 0
    assert [bucket.take(0.5) for _ in range(5)] == [0.5] * 5
    assert bucket.take(1.0) == 0


KEYS = [
    ApiKey(name="ops", sha256=hash_key("ops-key"), scopes=["infer", "admin"]),
    ApiKey(name="app", sha256=hash_key("app-key")),
    ApiKey(name="trial", sha256=hash_key("trial-key"), rate_per_s=0.5),
]


@pytest.mark.parametrize(
    ("key", "scope", "outcome"),
    [
        (None, None, None),  # open routes need nothing
        ("anything", None, None),
        (None, "infer", "unauthorized"),
        ("wrong", "infer", "unauthorized"),
        ("app-key", "infer", "app"),
        ("app-key", "admin", "forbidden"),  # scopes default to infer only
        ("ops-key", "admin", "ops"),
        ("ops-key", "infer", "ops"),
        ("trial-key", "infer", "trial"),
    ],
)
def test_access_decisions(key: str | None, scope: str | None, outcome: str | None) -> None:
    access = AccessControl(KEYS, required=True, clock=Clock())
    if outcome in {"unauthorized", "forbidden"}:
        with pytest.raises(AimeshError) as caught:
            access.check(key, scope)  # type: ignore[arg-type]
        assert caught.value.code == outcome
    else:
        caller = access.check(key, scope)  # type: ignore[arg-type]
        assert (caller.name if caller else None) == outcome


def test_without_auth_every_request_passes() -> None:
    assert AccessControl(KEYS, required=False).check(None, "admin") is None


def test_each_key_has_its_own_bucket_default_burst_twice_the_rate() -> None:
    clock = Clock()
    access = AccessControl(
        [*KEYS, ApiKey(name="fast", sha256=hash_key("fast-key"), rate_per_s=2)],
        required=True,
        clock=clock,
    )
    assert [access.check("fast-key", "infer") is not None for _ in range(4)] == [True] * 4
    with pytest.raises(RateLimited) as caught:
        access.check("fast-key", "infer")
    assert caught.value.retry_after_s == pytest.approx(0.5)
    assert access.check("trial-key", "infer") is not None  # another key, another bucket
    clock.now += 0.5
    assert access.check("fast-key", "infer") is not None


@pytest.mark.parametrize(
    ("api_key", "authorization", "expected"),
    [
        ("k1", None, "k1"),
        (None, "Bearer k2", "k2"),
        (None, "bearer  k2 ", "k2"),
        ("k1", "Bearer k2", "k1"),
        (None, "Basic abc", None),
        (None, "Bearer", None),
        (None, None, None),
        ("", None, None),
    ],
)
def test_key_from_headers(
    api_key: str | None, authorization: str | None, expected: str | None
) -> None:
    assert key_from_headers(api_key, authorization) == expected


@pytest.mark.parametrize(("wait", "header"), [(0.001, "1"), (1.0, "1"), (1.01, "2"), (7.5, "8")])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert retry_after(RateLimited("k", wait)) == header


def test_hash_key_is_the_sha256_the_settings_store() -> None:
    assert hash_key("s3cret") == "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"

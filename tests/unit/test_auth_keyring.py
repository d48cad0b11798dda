"""API keys, scopes, token buckets and failed-attempt throttling, with a fake clock."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from aimesh.auth import (
    ANONYMOUS,
    LOCAL_OPERATOR,
    FailedAttempts,
    KeyEntry,
    Keyring,
    TokenBucket,
    hash_key,
    key_from_headers,
    new_key,
    service_key,
)
from aimesh.errors import AimeshError, AuthThrottled, RateLimited
from aimesh.rest import retry_after


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


STATIC = [KeyEntry("ops", hash_key("ops-key"), frozenset({"admin"}))]
STORED = [
    KeyEntry("dash", hash_key("dash-key"), frozenset({"read"})),
    KeyEntry("app", hash_key("app-key"), frozenset({"infer"})),
    KeyEntry("ci", hash_key("ci-key"), frozenset({"write"})),
    KeyEntry("trial", hash_key("trial-key"), frozenset({"infer"}), rate_per_s=0.5),
]


@pytest.mark.parametrize(
    ("key", "scope", "outcome"),
    [
        (None, None, "anonymous"),  # open routes need nothing
        ("anything", None, "anonymous"),
        (None, "read", "unauthorized"),
        ("wrong", "infer", "unauthorized"),
        ("dash-key", "read", "dash"),
        ("dash-key", "infer", "forbidden"),  # read does not include infer
        ("dash-key", "write", "forbidden"),
        ("app-key", "infer", "app"),
        ("app-key", "read", "forbidden"),
        ("ci-key", "read", "ci"),  # write includes read and infer
        ("ci-key", "infer", "ci"),
        ("ci-key", "write", "ci"),
        ("ci-key", "admin", "forbidden"),
        ("ops-key", "admin", "ops"),  # a static key, beside the stored ones
        ("ops-key", "read", "ops"),  # admin includes everything
        ("trial-key", "infer", "trial"),
        ("svc-key", "admin", "service"),  # the service credential
    ],
)
def test_access_decisions(key: str | None, scope: str | None, outcome: str) -> None:
    keyring = Keyring(static=STATIC, service_key="svc-key", stored=STORED, clock=Clock())
    if outcome in {"unauthorized", "forbidden"}:
        with pytest.raises(AimeshError) as caught:
            keyring.check(key, scope, client="c")  # type: ignore[arg-type]
        assert caught.value.code == outcome
    else:
        assert keyring.check(key, scope, client="c").name == outcome  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("static", "stored", "enabled"),
    [
        ([], [], False),  # no key anywhere: auth off
        (STATIC, [], True),
        ([], STORED, True),
        ([], None, True),  # stored keys not read yet: refuse rather than open
    ],
)
def test_auth_is_on_whenever_any_key_exists(
    static: list[KeyEntry], stored: list[KeyEntry] | None, enabled: bool
) -> None:
    keyring = Keyring(static=static, service_key="svc-key", stored=stored)
    assert keyring.enabled is enabled
    if not enabled:
        assert keyring.check(None, "admin") is LOCAL_OPERATOR
        assert keyring.check(None, None) is LOCAL_OPERATOR
    else:
        assert keyring.check(None, None) is ANONYMOUS


def test_a_revoked_key_stops_working_when_the_stored_keys_are_replaced() -> None:
    keyring = Keyring(stored=STORED)
    assert keyring.check("dash-key", "read").name == "dash"
    keyring.replace([k for k in STORED if k.name != "dash"])
    with pytest.raises(AimeshError) as caught:
        keyring.check("dash-key", "read")
    assert caught.value.code == "unauthorized"
    keyring.replace([])
    assert not keyring.enabled  # the last key gone: auth off again


def test_only_the_service_credential_may_act_for_another_identity() -> None:
    keyring = Keyring(service_key="svc-key", stored=STORED)
    acting = keyring.check("svc-key", "read", on_behalf="alice;read")
    assert (acting.name, acting.has("read"), acting.has("write")) == ("alice", True, False)
    with pytest.raises(AimeshError) as caught:
        keyring.check("svc-key", "write", on_behalf="alice;read")  # checked as alice
    assert caught.value.code == "forbidden"
    # A key of a person cannot claim to be someone else.
    assert keyring.check("ci-key", "write", on_behalf="root;admin").name == "ci"


def test_each_key_has_its_own_bucket_default_burst_twice_the_rate() -> None:
    clock = Clock()
    fast = KeyEntry("fast", hash_key("fast-key"), frozenset({"infer"}), rate_per_s=2)
    keyring = Keyring(stored=[*STORED, fast], clock=clock)
    assert [keyring.check("fast-key", "infer").name for _ in range(4)] == ["fast"] * 4
    with pytest.raises(RateLimited) as caught:
        keyring.check("fast-key", "infer")
    assert caught.value.retry_after_s == pytest.approx(0.5)
    assert keyring.check("trial-key", "infer").name == "trial"  # another key, another bucket
    keyring.replace([*STORED, fast])  # a reload keeps the bucket: no fresh burst
    with pytest.raises(RateLimited):
        keyring.check("fast-key", "infer")
    clock.now += 0.5
    assert keyring.check("fast-key", "infer").name == "fast"


@pytest.mark.parametrize(
    ("failures_at", "then_at", "wait"),
    [
        # limit 3 in a 10 s window; failures at these seconds, then a try at then_at
        ([0, 1], 2, 0.0),  # under the limit
        ([0, 1, 2], 3, 7.0),  # at the limit: until the oldest is 10 s old
        ([0, 1, 2], 10, 0.0),  # the oldest left the window
        ([0, 5, 9], 12, 0.0),  # 0 left the window: two failures remain
        ([3, 5, 9], 12, 1.0),  # three in the window: until 3 is 10 s old
    ],
)
def test_failed_attempts_throttle_a_client_within_a_window(
    failures_at: list[float], then_at: float, wait: float
) -> None:
    attempts = FailedAttempts(limit=3, window_s=10.0)
    for at in failures_at:
        attempts.failed("1.2.3.4", at)
    assert attempts.wait("1.2.3.4", then_at) == pytest.approx(wait)
    assert attempts.wait("5.6.7.8", then_at) == 0.0  # another client is not affected


def test_a_client_presenting_bad_keys_is_throttled_even_with_a_good_one() -> None:
    clock = Clock()
    keyring = Keyring(stored=STORED, attempts=FailedAttempts(limit=3, window_s=60), clock=clock)
    for _ in range(3):
        with pytest.raises(AimeshError) as caught:
            keyring.check("guess", "read", client="10.0.0.9")
        assert caught.value.code == "unauthorized"
    with pytest.raises(AuthThrottled) as throttled:
        keyring.check("dash-key", "read", client="10.0.0.9")
    assert throttled.value.code == "auth_throttled"
    assert retry_after(throttled.value) == "60"
    assert keyring.check("dash-key", "read", client="10.0.0.10").name == "dash"
    clock.now += 60
    assert keyring.check("dash-key", "read", client="10.0.0.9").name == "dash"


def test_missing_keys_are_not_counted_as_failures() -> None:
    keyring = Keyring(stored=STORED, attempts=FailedAttempts(limit=1, window_s=60))
    for _ in range(3):
        with pytest.raises(AimeshError):
            keyring.check(None, "read", client="c")
    assert keyring.check("dash-key", "read", client="c").name == "dash"


def test_failed_attempts_remember_a_bounded_number_of_clients() -> None:
    attempts = FailedAttempts(limit=1, window_s=60, max_clients=2)
    for client in ("a", "b", "c"):
        attempts.failed(client, 0.0)
    assert attempts.wait("a", 1.0) == 0.0  # forgotten, the oldest
    assert attempts.wait("c", 1.0) == pytest.approx(59.0)


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


def test_new_keys_are_random_and_recognisable() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("amk_") and len(k) == 47 for k in keys)


def test_the_service_credential_is_made_once_private_and_shared(tmp_path: Path) -> None:
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(service_key(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 1  # racing processes (threads here) agree on one key
    path = tmp_path / "secrets" / "service.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["service.key"]  # no temporary file left behind
    assert service_key(tmp_path, "given") == "given"  # auth.service_key wins

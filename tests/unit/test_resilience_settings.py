"""The resilience settings: small deployments' defaults, per-route partial overrides from
aimesh.yaml, and every bad value named at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimesh.config import Fallback, ResilienceSettings, load_settings
from aimesh.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AIMESH_HOME", "AIMESH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_those_written_down_for_small_deployments() -> None:
    r = load_settings().gateway.resilience
    b = r.breaker
    assert (b.window, b.window_size, b.min_calls, b.failure_rate) == ("count", 20, 10, 0.5)
    assert (b.slow_call_s, b.slow_call_rate, b.open_s, b.probes) == (1.0, 0.8, 5.0, 3)
    o = r.outlier
    assert (o.consecutive_failures, o.base_ejection_s, o.max_ejection_percent) == (3, 5.0, 50)
    assert (r.retry.attempts, r.retry.budget_ratio, r.retry.budget_min) == (2, 0.2, 3)
    assert r.enabled and r.timeout_s is None and r.routes == {}


def test_a_route_overrides_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "aimesh.yaml").write_text(
        "gateway:\n"
        "  resilience:\n"
        "    breaker: {open_s: 2, min_calls: 4}\n"
        "    routes:\n"
        "      fraud:\n"
        "        breaker: {window: time, window_size: 30}\n"
        "        retry: {attempts: 3}\n"
        "        timeout_s: 2.5\n"
        "        fallback: {version: '4'}\n"
        "      scorer:\n"
        "        fallback:\n"
        "          outputs: [{name: p, datatype: FP32, shape: [1, 2], data: [0.1, 0.9]}]\n"
    )
    r = load_settings().gateway.resilience
    fraud = r.for_route("fraud")
    assert fraud.breaker.window == "time" and fraud.breaker.window_size == 30
    assert fraud.breaker.open_s == 2 and fraud.breaker.min_calls == 4  # the file's defaults
    assert fraud.breaker.probes == 3  # aimesh's default
    assert fraud.retry.attempts == 3 and fraud.retry.budget_ratio == 0.2
    assert fraud.timeout_s == 2.5 and fraud.routes == {}
    other = r.for_route("other")
    assert other.breaker == r.breaker and other.timeout_s is None
    assert r.fallback_for("fraud") == Fallback(version="4")
    assert r.fallback_for("fraud").kind == "version"  # type: ignore[union-attr]
    static = r.fallback_for("scorer")
    assert static is not None and static.kind == "static"
    assert static.outputs is not None and static.outputs[0].data == [0.1, 0.9]
    assert r.fallback_for("other") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("breaker: {failure_rate: 0}\n", r"aimesh.yaml:3: gateway.resilience.breaker.failure"),
        ("breaker: {probes: 0}\n", "breaker.probes: must be at least 1"),
        ("breaker: {window: calls}\n", "breaker.window"),
        ("breaker: {min_calls: 21}\n", r"min_calls \(21\) is more than the calls"),
        ("breaker: {opens: 1}\n", "unknown setting"),
        ("outlier: {max_ejection_percent: 101}\n", "max_ejection_percent: must be at most 100"),
        ("outlier: {base_ejection_s: 40}\n", "max_ejection_s must be at least base_ejection_s"),
        ("retry: {backoff_s: 2}\n", "backoff_max_s must be at least backoff_s"),
        ("routes: {fraud: {breaker: {window_size: 5}}}\n", r"routes.fraud.breaker.min_calls"),
        ("routes: {fraud: {outlier: {}}}\n", "unknown setting"),
        ("routes: {fraud: {fallback: {}}}\n", "give exactly one kind"),
        ("routes: {fraud: {fallback: {version: '2', outputs: []}}}\n", "fallback"),
        (
            "routes: {f: {fallback: {outputs: [{name: p, datatype: FP32, shape: [2], "
            "data: [1]}]}}}\n",
            r"shape \[2\] holds 2 elements, data has 1",
        ),
        (
            "routes: {f: {fallback: {outputs: [{name: p, datatype: FLOAT, shape: [1], "
            "data: [1]}]}}}\n",
            "datatype",
        ),
    ],
)
def test_bad_resilience_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "aimesh.yaml").write_text("gateway:\n  resilience:\n    " + text)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_a_time_window_may_ask_for_more_calls_than_its_seconds() -> None:
    settings = ResilienceSettings.model_validate(
        {"breaker": {"window": "time", "window_size": 5, "min_calls": 50}}
    )
    assert settings.breaker.min_calls == 50


def test_a_fallback_to_another_models_version() -> None:
    fallback = Fallback(model="fraud-lite", version="2")
    assert fallback.kind == "model"

"""The project file: every problem reported at once, each at its line; the starter loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimesh.config import load_settings
from aimesh.errors import ConfigError
from aimesh.local import STARTER_PROJECT_FILE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AIMESH_HOME", "AIMESH_CONFIG", "AIMESH_REGISTRY__URL", "AIMESH_BUS__URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def _problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "aimesh.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    problems: list[str] = caught.value.details["problems"]
    assert caught.value.message.splitlines() == problems
    return problems


def test_every_problem_is_reported_at_its_line_in_file_order(tmp_path: Path) -> None:
    text = (
        "services:\n"  # 1
        "  gateway: false\n"  # 2
        "  models:\n"  # 3
        "    - ref: fraud@champion\n"  # 4
        "      replicas: 0\n"  # 5
        "    - replicas: 2\n"  # 6
        "log_level: loud\n"  # 7
        "registry:\n"  # 8
        "  port: 70000\n"  # 9
    )
    assert _problems(tmp_path, text) == [
        "aimesh.yaml:5: services.models.0.replicas: must be at least 1",
        "aimesh.yaml:6: services.models.1.ref: is required",
        "aimesh.yaml:7: log_level: must be one of 'debug', 'info', 'warning' or 'error'",
        "aimesh.yaml:9: registry.port: must be at most 65535",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "lgo_level: info\n",
            "aimesh.yaml:1: lgo_level: unknown setting (did you mean log_level?)",
        ),
        (
            "gateway:\n  host: 127.0.0.1\n  prot: 8080\n",
            "aimesh.yaml:3: gateway.prot: unknown setting (did you mean port?)",
        ),
        (
            "services:\n  models:\n    - ref: fraud\n      replica: 2\n",
            "aimesh.yaml:4: services.models.0.replica: unknown setting (did you mean replicas?)",
        ),
        (
            "gateway:\n  keys:\n    - name: app\n      sha256: "
            + "ab" * 32
            + "\n      scope: [x]\n",
            "aimesh.yaml:5: gateway.keys.0.scope: unknown setting (did you mean scopes?)",
        ),
        ("bus:\n  zzz: 1\n", "aimesh.yaml:2: bus.zzz: unknown setting (known: url,"),
    ],
)
def test_an_unknown_key_at_any_depth_is_an_error(tmp_path: Path, text: str, expected: str) -> None:
    [problem] = _problems(tmp_path, text)
    assert problem.startswith(expected)


def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    text = "registry:\n  port: 8100\nlog_level: info\nregistry:\n  port: 8200\n"
    assert _problems(tmp_path, text) == ["aimesh.yaml:4: registry: duplicate key (first at line 1)"]


def test_an_unknown_key_is_told_once_beside_other_problems(tmp_path: Path) -> None:
    unknown, invalid = _problems(tmp_path, "nonsense: 1\nregistry:\n  port: -1\n")
    assert unknown.startswith("aimesh.yaml:1: nonsense: unknown setting (known: home, log_level,")
    assert "services" in unknown
    assert invalid == "aimesh.yaml:3: registry.port: must be at least 0"


def test_a_problem_of_the_environment_has_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIMESH_SERVING__WORKERS", "0")
    problems = _problems(tmp_path, "registry:\n  port: -1\n")
    assert problems == [
        "aimesh.yaml:2: registry.port: must be at least 0",
        "invalid settings: serving.workers: must be at least 1",
    ]


def test_the_environment_still_overrides_a_bad_value_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aimesh.yaml").write_text("registry:\n  port: -1\n")
    monkeypatch.setenv("AIMESH_REGISTRY__PORT", "8300")
    assert load_settings().registry.port == 8300


def test_a_file_of_comments_only_is_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "aimesh.yaml").write_text("# nothing yet\n")
    assert load_settings().services.registry is True


def test_the_path_given_is_the_path_shown(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "stack.yaml"
    path.parent.mkdir()
    path.write_text("services:\n  models:\n    - {ref: fraud, replicas: 99}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: services\.models\.0\.replicas: "):
        load_settings(path)


def test_the_starter_file_loads_and_declares_every_section(tmp_path: Path) -> None:
    path = tmp_path / "aimesh.yaml"
    path.write_text(STARTER_PROJECT_FILE)
    settings = load_settings(path)
    assert settings.services.registry and settings.services.gateway
    assert settings.services.models == []
    for section in ("services:", "bus:", "registry:", "gateway:", "serving:", "keys:"):
        assert f"\n{section}" in STARTER_PROJECT_FILE or f"  {section}" in STARTER_PROJECT_FILE


def test_the_fraud_example_loads() -> None:
    settings = load_settings(REPO / "examples" / "fraud" / "aimesh.yaml")
    [model] = settings.services.models
    assert (model.ref, model.replicas) == ("fraud@champion", 2)


def test_the_starter_file_shows_the_trust_policy_commented_and_off() -> None:
    assert "  # allow_code_artifacts: false" in STARTER_PROJECT_FILE
    uncommented = [
        line.split("#")[0]
        for line in STARTER_PROJECT_FILE.splitlines()
        if "allow_code_artifacts" in line.split("#")[0]
    ]
    assert uncommented == []

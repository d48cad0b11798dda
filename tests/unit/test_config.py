"""Settings precedence: defaults < aimesh.yaml < AIMESH_* environment < arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimesh.config import load_settings
from aimesh.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AIMESH_HOME", "AIMESH_CONFIG", "AIMESH_REGISTRY__URL", "AIMESH_BUS__URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_put_everything_under_the_home(tmp_path: Path) -> None:
    s = load_settings()
    assert s.home_dir == tmp_path / ".aimesh"
    assert s.registry_database_url == f"sqlite:///{tmp_path / '.aimesh' / 'registry.db'}"
    assert s.artifacts_url == str(tmp_path / ".aimesh" / "artifacts")
    assert s.bus.url is None and s.registry.url is None


def test_project_file_then_environment_then_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aimesh.yaml").write_text(
        "home: from-file\nregistry:\n  port: 9100\n  url: http://file:1\nbus:\n  url: nats://file:2\n"
    )
    s = load_settings()
    assert s.home == Path("from-file") and s.registry.port == 9100
    monkeypatch.setenv("AIMESH_REGISTRY__URL", "http://env:1")
    monkeypatch.setenv("AIMESH_HOME", str(tmp_path / "envhome"))
    s = load_settings()
    assert s.registry.url == "http://env:1"
    assert s.home_dir == tmp_path / "envhome"
    assert s.registry.port == 9100  # the file still fills what the environment leaves
    assert s.bus.url == "nats://file:2"
    assert load_settings(registry={"url": "http://arg:1"}).registry.url == "http://arg:1"


def test_explicit_and_env_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("log_level: debug\n")
    assert load_settings(other).log_level == "debug"
    monkeypatch.setenv("AIMESH_CONFIG", str(other))
    assert load_settings().log_level == "debug"


def test_bad_yaml_points_at_the_line(tmp_path: Path) -> None:
    (tmp_path / "aimesh.yaml").write_text("registry:\n  port: 1\n   bad: [\n")
    with pytest.raises(ConfigError, match=r"aimesh.yaml:3"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registry:\n  port: -1\n", "registry.port"),
        ("nonsense: 1\n", "nonsense"),
        ("- a list\n", "mapping"),
        ("log_level: loud\n", "log_level"),
        ("jobs:\n  webhook_allow: [10.0.0.0/33]\n", "not a host name, an IP address or a CIDR"),
        ("jobs:\n  webhook_allow: ['http://x']\n", "jobs.webhook_allow"),
        ("jobs:\n  timeouts_s: {Training: 10}\n", "not a job kind"),
        ("jobs:\n  timeouts_s: {training: 0}\n", "jobs.timeouts_s"),
        ("training:\n  allowed_trainers: [os]\n", "not a module:Class or module:\\* pattern"),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "aimesh.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_job_timeouts_default_by_kind_and_webhook_and_trainer_lists_load(tmp_path: Path) -> None:
    s = load_settings()
    assert (s.jobs.timeout_for("training"), s.jobs.timeout_for("inference")) == (3600, 60)
    assert s.jobs.timeout_for("anything") == s.jobs.default_timeout_s == 600
    (tmp_path / "aimesh.yaml").write_text(
        "jobs:\n  default_timeout_s: 30\n  timeouts_s: {training: 7200}\n"
        "  webhook_allow: [hooks.internal, 10.1.0.0/16, '[::1]']\n"
        "training:\n  allowed_trainers: ['mycompany.models:*']\n"
    )
    s = load_settings()
    assert (s.jobs.timeout_for("training"), s.jobs.timeout_for("inference")) == (7200, 30)
    assert s.jobs.webhook_allow == ["hooks.internal", "10.1.0.0/16", "[::1]"]
    assert s.training.allowed_trainers == ["mycompany.models:*"]


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_bus_credentials_come_from_the_file_or_the_environment_and_are_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aimesh.yaml").write_text(
        "bus:\n  url: nats://nats:4222\n  user: alice\n  password: file-secret\n"
        "  tls_ca_file: ca.pem\n  jobs_max_bytes: 2048\n"
    )
    s = load_settings()
    assert s.bus.user == "alice" and s.bus.password is not None
    assert s.bus.password.get_secret_value() == "file-secret"
    assert s.bus.tls and s.bus.tls_ca_file == Path("ca.pem")
    assert s.bus.jobs_max_bytes == 2048
    assert "file-secret" not in repr(s) and "file-secret" not in str(s.model_dump())
    monkeypatch.setenv("AIMESH_BUS__TOKEN", "env-token")
    token = load_settings().bus.token
    assert token is not None and token.get_secret_value() == "env-token"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bus:\n  user: alice\n", "bus.user and bus.password go together"),
        ("bus:\n  password: x\n", "bus.user and bus.password go together"),
        ("bus:\n  tls_cert_file: c.pem\n", "tls_cert_file and bus.tls_key_file go together"),
        ("bus:\n  jobs_max_bytes: 10\n", "bus.jobs_max_bytes"),
        ("bus:\n  pasword: x\n", "bus.pasword"),
    ],
)
def test_incomplete_bus_credentials_and_tiny_limits_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "aimesh.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings()

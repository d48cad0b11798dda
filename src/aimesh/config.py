"""One typed settings object for the whole platform.

Precedence, lowest first: defaults < ``aimesh.yaml`` < ``AIMESH_*`` environment variables
< arguments given in code. Nested fields use ``__`` in the environment, e.g.
``AIMESH_REGISTRY__URL=http://127.0.0.1:8100``. Everything aimesh writes lives under
``home`` (``.aimesh/`` by default, moved with ``AIMESH_HOME``).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from aimesh.errors import ConfigError

DEFAULT_CONFIG_FILE = "aimesh.yaml"
_config_file: ContextVar[Path | None] = ContextVar("aimesh_config_file", default=None)


class BusSettings(BaseModel):
    """Where the NATS bus is, or how to start the embedded one."""

    url: str | None = Field(
        default=None,
        description="NATS URL of an existing server or cluster (e.g. nats://nats:4222). "
        "Unset: use the embedded server of this home, starting it if needed.",
    )
    connect_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds to wait when connecting to the bus."
    )
    start_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Seconds to wait for the embedded server to be ready.",
    )


class RegistrySettings(BaseModel):
    """The model registry: its service address, its database and its artifact store."""

    url: str | None = Field(
        default=None,
        description="Base URL of a running registry service (e.g. http://127.0.0.1:8100). "
        "Unset: the CLI works directly on the local store.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry database. Unset: SQLite at HOME/registry.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db.",
    )
    artifacts_url: str | None = Field(
        default=None,
        description="Folder or fsspec URL (s3://bucket/prefix) of the artifact store. "
        "Unset: HOME/artifacts.",
    )
    max_artifact_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest artifact accepted by an upload, in bytes."
    )
    host: str = Field(default="127.0.0.1", description="Address `aimesh registry serve` binds.")
    port: int = Field(
        default=8100, ge=0, le=65535, description="Port `aimesh registry serve` binds."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Timeout of one call to a remote registry."
    )


class ServingSettings(BaseModel):
    """A model service: ports, workers, batching and the limits that protect it."""

    host: str = Field(default="127.0.0.1", description="Address the model service binds.")
    http_port: int = Field(default=9000, ge=0, le=65535, description="REST port (0: any free).")
    grpc_port: int = Field(default=9001, ge=0, le=65535, description="gRPC port (0: any free).")
    workers: int = Field(default=1, ge=1, le=64, description="Processes sharing the ports.")
    batching: bool = Field(default=True, description="Coalesce concurrent requests.")
    max_batch_size: int = Field(default=64, ge=1, le=65536, description="Rows in one model call.")
    max_latency_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Longest wait for a batch to fill, under load."
    )
    max_queue: int = Field(
        default=2048, ge=1, description="Requests waiting for the model before 503s."
    )
    max_concurrency: int = Field(
        default=1024, ge=1, description="Requests in flight per worker before 429s."
    )
    max_request_bytes: int = Field(
        default=64 * 1024**2, gt=0, description="Largest request body accepted (413 beyond)."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest a request may wait for the model."
    )
    drain_timeout_s: float = Field(
        default=20.0,
        ge=0,
        le=600,
        description="On shutdown or swap, wait this long for in-flight requests.",
    )
    heartbeat_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds between discovery heartbeats."
    )
    access_log: bool = Field(
        default=False, description="Log every request (method, path, status, ms, request id)."
    )


class ApiKey(BaseModel):
    """One API key the gateway accepts: stored as its sha256, never in clear."""

    name: str = Field(min_length=1, max_length=64, description="Who holds the key (for logs).")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 hex of the key (`aimesh gateway hash-key` prints it).",
    )
    scopes: list[Literal["infer", "admin"]] = Field(
        default_factory=lambda: ["infer"],
        description="infer: /v2 inference; admin: /api (registry and other services).",
    )
    rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second allowed (token bucket); unset: no limit.",
    )
    burst: int | None = Field(default=None, ge=1, description="Bucket size; default: 2 x rate.")


class GatewaySettings(BaseModel):
    """The gateway: the single entry point in front of every service."""

    host: str = Field(default="127.0.0.1", description="Address the gateway binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="REST port.")
    grpc_port: int = Field(default=8081, ge=0, le=65535, description="gRPC port.")
    auth: bool = Field(
        default=False, description="Require an API key (X-API-Key or Bearer) except on health."
    )
    keys: list[ApiKey] = Field(default_factory=list, description="Accepted API keys.")
    max_request_bytes: int = Field(
        default=64 * 1024**2, gt=0, description="Largest request body accepted (413 beyond)."
    )
    upstream_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait for an upstream's answer."
    )
    max_connections_per_upstream: int = Field(
        default=64, ge=1, le=4096, description="Pooled keep-alive connections per upstream."
    )


class ModelServiceSpec(BaseModel):
    """A model service `aimesh up` runs: a model reference, replicas, workers, batching."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="NAME@ALIAS, NAME@VERSION or NAME.")
    replicas: int = Field(default=1, ge=1, le=32, description="Separate processes, own ports.")
    workers: int = Field(default=1, ge=1, le=64, description="Processes per replica (one port).")
    batching: bool | None = Field(default=None, description="Unset: serving.batching.")
    max_batch_size: int | None = Field(default=None, ge=1, description="Unset: serving default.")
    max_latency_ms: float | None = Field(default=None, ge=0, description="Unset: serving default.")


class ServicesSettings(BaseModel):
    """What `aimesh up` starts, in this order: registry, model services, gateway."""

    model_config = ConfigDict(extra="forbid")

    registry: bool = Field(default=True, description="Run the registry service.")
    gateway: bool = Field(default=True, description="Run the gateway.")
    models: list[ModelServiceSpec] = Field(default_factory=list, description="Model services.")


class Settings(BaseSettings):
    """All of aimesh's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="AIMESH_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(
        default=Path(".aimesh"), description="Folder for everything aimesh writes on this machine."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level of log line written."
    )
    log_format: Literal["json", "console"] = Field(
        default="console", description="Structured JSON lines, or readable lines for a terminal."
    )
    bus: BusSettings = Field(default_factory=BusSettings, description="The NATS bus.")
    registry: RegistrySettings = Field(
        default_factory=RegistrySettings, description="The model registry."
    )
    serving: ServingSettings = Field(default_factory=ServingSettings, description="Model services.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="The gateway.")
    services: ServicesSettings = Field(
        default_factory=ServicesSettings, description="What `aimesh up` runs."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=_read_yaml(path)))
        return tuple(sources)

    # Derived locations. Everything lives under the home unless configured elsewhere.

    @property
    def home_dir(self) -> Path:
        """The home folder as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def bus_dir(self) -> Path:
        """Where the embedded NATS server keeps JetStream data and its address file."""
        return self.home_dir / "bus"

    @property
    def registry_database_url(self) -> str:
        """The registry database URL, defaulting to SQLite in the home."""
        return self.registry.database_url or f"sqlite:///{self.home_dir / 'registry.db'}"

    @property
    def artifacts_url(self) -> str:
        """The artifact store URL, defaulting to a folder in the home."""
        return self.registry.artifacts_url or str(self.home_dir / "artifacts")

    @property
    def cache_dir(self) -> Path:
        """Local cache of verified artifacts fetched from a remote store."""
        return self.home_dir / "cache"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def find_config_file(explicit: Path | None = None) -> Path | None:
    """The project file to read: the one given, ``$AIMESH_CONFIG``, or ./aimesh.yaml if present."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"project file {explicit} does not exist")
        return explicit
    env = os.environ.get("AIMESH_CONFIG")
    if env:
        return find_config_file(Path(env))
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, the project file, the environment and overrides."""
    token = _config_file.set(find_config_file(config_file))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
    finally:
        _config_file.reset(token)

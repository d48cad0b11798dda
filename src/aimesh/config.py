"""One typed settings object for the whole platform.

Precedence, lowest first: defaults < ``aimesh.yaml`` < ``AIMESH_*`` environment variables
< arguments given in code. Nested fields use ``__`` in the environment, e.g.
``AIMESH_REGISTRY__URL=http://127.0.0.1:8100``. Everything aimesh writes lives under
``home`` (``.aimesh/`` by default, moved with ``AIMESH_HOME``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from aimesh._project_file import Problem, ProjectFile
from aimesh.auth import KEY_NAME_PATTERN, Scope
from aimesh.errors import ConfigError

DEFAULT_CONFIG_FILE = "aimesh.yaml"

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_TRAINER_PATTERN = re.compile(r"[A-Za-z_*][A-Za-z0-9_.*]*:[A-Za-z_*][A-Za-z0-9_*]*")


@dataclass(frozen=True)
class _FileSource:
    """What :meth:`Settings.settings_customise_sources` reads from the project file."""

    data: dict[str, Any]
    # False only to learn which problems the file causes by itself (see load_settings).
    with_environment: bool = True


_project: ContextVar[_FileSource | None] = ContextVar("aimesh_project", default=None)


class BusSettings(BaseModel):
    """Where the NATS bus is, how to authenticate to it, or how to start the embedded one.

    The embedded server of a home needs none of the credential fields: it generates its own
    token into HOME/bus/token (mode 0600), which every aimesh process of the home reads. The
    credential fields are for an external server set in ``url``; each follows the standard
    NATS way of giving it (a user and password also work inside the URL,
    ``nats://user:password@host:4222``, and a token as ``nats://token@host:4222``).
    """

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="NATS URL of an existing server or cluster (e.g. nats://nats:4222, or "
        "tls://nats:4222 for TLS). Unset: use the embedded server of this home, starting it "
        "if needed.",
    )
    user: str | None = Field(
        default=None, description="User name for an external server (with `password`)."
    )
    password: SecretStr | None = Field(
        default=None, description="Password of `user` for an external server."
    )
    token: SecretStr | None = Field(
        default=None, description="Authentication token for an external server."
    )
    nkey_seed_file: Path | None = Field(
        default=None,
        description="File holding the NKey seed (SU...) of an NKey user of an external server. "
        "Needs the `nkeys` package.",
    )
    creds_file: Path | None = Field(
        default=None,
        description="A `.creds` file (user JWT and NKey seed, as `nsc` writes it) for an "
        "external server in operator mode. Needs the `nkeys` package.",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities that sign the server's "
        "certificate. Setting any tls_* field turns TLS on; unset: the system's CAs.",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM client certificate, for a server that verifies clients."
    )
    tls_key_file: Path | None = Field(
        default=None, description="PEM private key of `tls_cert_file`."
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
    events_max_bytes: int = Field(
        default=1024**3,
        ge=1024**2,
        description="Size limit of the AIMESH_EVENTS stream; when full, the oldest events are "
        "dropped (events are also dropped after a week).",
    )
    jobs_max_bytes: int = Field(
        default=1024**3,
        ge=1024,
        description="Size limit of the AIMESH_JOBS work queue (jobs waiting for a worker); "
        "when full, new jobs are refused with queue_full until workers catch up.",
    )
    jobs_max_msgs: int = Field(
        default=1_000_000,
        ge=1,
        description="Most jobs waiting in the AIMESH_JOBS work queue; beyond, new jobs are "
        "refused with queue_full.",
    )
    dlq_max_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024**2,
        description="Size limit of the AIMESH_JOBS_DLQ stream (jobs that failed their last "
        "attempt); when full, the oldest are dropped (they are also dropped after 30 days).",
    )
    job_records_max_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024**2,
        description="Size limit of the aimesh_jobs KV bucket (job records, kept a week); "
        "when full, new jobs are refused with queue_full.",
    )
    job_data_max_bytes: int = Field(
        default=1024**3,
        ge=1024**2,
        description="Size limit of the aimesh_job_data KV bucket (large job inputs and "
        "results, kept a day); when full, new ones are refused with queue_full.",
    )

    @model_validator(mode="after")
    def _pairs_are_whole(self) -> Self:
        if (self.user is None) != (self.password is None):
            raise ValueError("bus.user and bus.password go together: set both or neither")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "bus.tls_cert_file and bus.tls_key_file go together: set both or neither"
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether any TLS option is set (a ``tls://`` URL turns TLS on by itself too)."""
        return any(f is not None for f in (self.tls_ca_file, self.tls_cert_file))


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
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of the artifact store; for s3:// (s3fs): key, secret, "
        "endpoint_url, client_kwargs: {region_name}. Unset: the AWS environment or ~/.aws.",
    )
    max_artifact_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest artifact accepted by an upload, in bytes."
    )
    max_request_bytes: int = Field(
        default=1024**2,
        gt=0,
        description="Largest JSON request body (413 beyond); uploads have max_artifact_bytes.",
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Requests in flight in one registry service, uploads included; more are "
        "refused (503 overloaded, with Retry-After). /health and the docs are never refused.",
    )
    host: str = Field(default="127.0.0.1", description="Address `aimesh registry serve` binds.")
    port: int = Field(
        default=8100, ge=0, le=65535, description="Port `aimesh registry serve` binds."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Timeout of one call to a remote registry."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Sent as X-API-Key to `url` when the registry there has keys that this "
        "home's service credential is not one of (a registry on another machine). Unset: "
        "the service credential is sent.",
    )
    allow_code_artifacts: bool = Field(
        default=False,
        description="Accept formats whose loading runs code from the artifact (pickle, "
        "joblib, python), and extra skops types beyond the safe defaults (--trust-type). "
        "Off: such pushes are refused (400 trust_disabled) before the artifact is read. On: "
        "only an identity with the admin scope may push them, and who did is recorded on "
        "the version. Inspecting such an artifact runs it in a separate, short-lived process.",
    )
    inspect_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Longest a code-running artifact's inspection (in its own process) may "
        "take before the push is refused (422 artifact_invalid).",
    )
    gc_grace_s: float = Field(
        default=3600.0,
        ge=0,
        description="Garbage collection keeps an unreferenced artifact or a staging file "
        "younger than this, in seconds (an upload whose version is not created yet).",
    )
    gc_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="How often the registry service collects garbage on its own, in seconds "
        "(also once when it starts); 0: only `aimesh registry gc`.",
    )


class ServingSettings(BaseModel):
    """A model service: ports, workers, batching and the limits that protect it."""

    host: str = Field(default="127.0.0.1", description="Address the model service binds.")
    http_port: int = Field(default=9000, ge=0, le=65535, description="REST port (0: any free).")
    grpc_port: int = Field(default=9001, ge=0, le=65535, description="gRPC port (0: any free).")
    workers: int = Field(default=1, ge=1, le=64, description="Processes sharing the ports.")
    threads: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Native threads (OpenMP, BLAS, onnxruntime) per worker process. One by "
        "default: online batches are small, a model scales by workers and replicas, and "
        "pools wider than that spin against each other's processes (two replicas on two "
        "cores lost 95% of their throughput). Raise it for models whose calls are big.",
    )
    batching: bool = Field(default=True, description="Coalesce concurrent requests.")
    max_batch_size: int = Field(default=64, ge=1, le=65536, description="Rows in one model call.")
    max_latency_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Longest wait for a batch to fill, under load."
    )
    max_queue: int = Field(
        default=2048, ge=1, description="Requests waiting for the model before 503s."
    )
    max_concurrency: int = Field(
        default=1024,
        ge=1,
        description="Requests in flight per worker; more are refused (503 overloaded, with "
        "Retry-After).",
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
    """One API key every service accepts, stored as its sha256, never in clear.

    For deployments without the CLI; keys made with `aimesh keys create` live in the
    registry database instead, and both kinds are accepted alike.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=KEY_NAME_PATTERN, description="Who holds the key (for logs and records)."
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 hex of the key (`aimesh keys hash KEY` prints it).",
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: list[Scope](["infer"]),
        description="read, infer, write or admin (write includes read and infer; admin all).",
    )
    rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second allowed (token bucket); unset: no limit.",
    )
    burst: int | None = Field(default=None, ge=1, description="Bucket size; default: 2 x rate.")


class AuthSettings(BaseModel):
    """Who may call the services: API keys, the service credential, failed-attempt limits."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(
        default_factory=list,
        description="Static API keys, besides those `aimesh keys create` stores in the "
        "registry. Any key at all turns auth on for every service.",
    )
    service_key: SecretStr | None = Field(
        default=None,
        description="The credential services use to call each other. Unset: generated "
        "into HOME/secrets/service.key (0600) when first needed.",
    )
    reload_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Services re-read the stored keys this often, besides on every key "
        "event of the bus (a safety net for a missed revocation).",
    )
    max_failures: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Unknown keys one client address may present within failure_window_s "
        "before it is refused (429 auth_throttled) for the rest of the window.",
    )
    failure_window_s: float = Field(
        default=60.0, gt=0, le=86400, description="The window of max_failures, in seconds."
    )
    # The HTTP edge of every service (aimesh.rest.guard, aimesh.rest.exposure).
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) whose pages may send changing "
        "requests (anything but GET/HEAD/OPTIONS); others get 403 origin_refused. Requests "
        "without an Origin (CLI, servers) and a service's own pages always pass. '*': any.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the services answer to besides localhost, 127.0.0.1, [::1], "
        "the bind address and the address a connection reached (DNS rebinding defense): "
        "e.g. gateway.example.com or *.example.com; others get 400 host_refused. '*': any.",
    )
    insecure: bool = Field(
        default=False,
        description="Let services bind non-loopback addresses while no API key exists "
        "(what --insecure says for one command); a warning is logged at every start.",
    )

    @field_validator("allowed_origins", "allowed_hosts")
    @classmethod
    def _lower_case(cls, values: list[str]) -> list[str]:
        return [v.strip().lower().rstrip("/") for v in values if v.strip()]


# The resilience layer (aimesh.resilience). Its defaults suit a small deployment (a model
# service with one to four replicas, a few to a few thousand requests a second), not the
# fleets Resilience4j's (100 calls, 60 s open) and Envoy's (5 failures, 30 s) are set for.


class BreakerSettings(BaseModel):
    """A circuit breaker per route and model version (:class:`aimesh.resilience.CircuitBreaker`)."""

    model_config = ConfigDict(extra="forbid")

    window: Literal["count", "time"] = Field(
        default="count",
        description="What the rates are taken over: the last `window_size` calls (count), or "
        "the calls of the last `window_size` seconds (time; better for traffic in bursts).",
    )
    window_size: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="Calls (count window) or seconds (time window) the failure and slow-call "
        "rates are taken over. 20 calls: at a few requests a second a broken version is "
        "seen within seconds, and 20 calls are still enough for a rate to mean something.",
    )
    min_calls: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Calls the window must hold before the breaker may open (at most "
        "window_size for a count window). 10: a rate over fewer calls is noise, and a quiet "
        "model's first two failures out of three do not stop it.",
    )
    failure_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of failed calls (timeouts, connection errors, 5xx; a 4xx the "
        "client caused is not counted) at or above which the breaker opens. Half: well above "
        "the stray failure of a healthy service, low enough that a version failing one call "
        "in two stops hurting its callers.",
    )
    slow_call_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="A call that takes at least this long is slow. One second: the models "
        "aimesh serves answer in milliseconds (p99 ~20 ms through the gateway under load), "
        "so a second means a service in trouble, and it is far below gateway."
        "upstream_timeout_s, so the breaker acts before timeouts pile up. Raise it for a "
        "route whose model is slow by nature.",
    )
    slow_call_rate: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of slow calls at or above which the breaker opens. 0.8: slowness "
        "alone is a weaker sign than errors (a burst of big batches), so it takes most calls "
        "being slow; below 1 so that a service getting slower trips although a few calls "
        "still come in under slow_call_s.",
    )
    open_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How long an open breaker refuses calls (503 circuit_open, with "
        "Retry-After) before it lets probes through. 5 s: `aimesh up` restarts a crashed "
        "replica within seconds; a minute would keep a recovered model dark for nothing.",
    )
    probes: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Calls a half-open breaker lets through (never more at once); it closes "
        "when their failure and slow-call rates are under the thresholds, and opens again as "
        "soon as they cannot be. 3: one lucky or unlucky call does not decide, and three "
        "calls cannot overload a service that is coming back.",
    )


class OutlierSettings(BaseModel):
    """Ejection of failing instances from load balancing (the resilience layer's
    ``OutlierDetector``). Per instance, shared by every route to it: no per-route override.
    """

    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Failures in a row (no success between) that eject an instance. 3, not "
        "Envoy's 5: with two replicas each failure of a dead one is a retry (or an error) "
        "on the other, so it should stop getting traffic after very few.",
    )
    base_ejection_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="An instance is ejected for this long times the number of times it was "
        "ejected lately (5 s, 10 s, 15 s...). 5 s: about the time `aimesh up` takes to "
        "restart a replica, so a restarted one gets traffic again soon.",
    )
    max_ejection_s: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="The longest ejection (at least base_ejection_s). An instance back and "
        "not ejected for this long starts again from base_ejection_s.",
    )
    max_ejection_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="Most of a service's instances ejected at once, in percent (rounded "
        "down; never the last one). Half: of two replicas one may be ejected, never both; "
        "when most instances fail, the fault is rarely theirs and the breaker is the answer.",
    )


class RetrySettings(BaseModel):
    """Retries of calls safe to repeat (inference), on another instance, within a budget."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(
        default=2,
        ge=1,
        le=10,
        description="Attempts of a call safe to repeat, the first included (1: no retries). "
        "2: with two replicas the retry reaches the other one; a third would go back to an "
        "instance that just failed. A request that never reached an instance (refused) "
        "moves on to another without counting.",
    )
    backoff_s: float = Field(
        default=0.025,
        ge=0,
        le=60,
        description="Cap of the first retry's wait, doubled for each later one; the wait is "
        "drawn at random below the cap (full jitter), so retries of many requests spread "
        "out. 25 ms: the retry goes to another instance, which need not recover first.",
    )
    backoff_max_s: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description="The largest cap a retry's wait is drawn under (at least backoff_s).",
    )
    budget_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Retries in flight at most this share of the requests in flight (per "
        "route and version), so that in an outage retries add at most a fifth to the load "
        "instead of multiplying it.",
    )
    budget_min: int = Field(
        default=3,
        ge=0,
        le=10_000,
        description="Retries always allowed in flight whatever the share: at a few requests "
        "at a time the share alone would forbid every retry.",
    )


class BulkheadSettings(BaseModel):
    """A limit of requests in flight per upstream instance; beyond, 503 at once."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Requests this gateway has in flight to one instance at most; more are "
        "refused at once (503 overloaded, Retry-After) unless another instance has room. "
        "256: four times the pooled connections (gateway.max_connections_per_upstream), so "
        "healthy load never meets it, while a stuck instance cannot hold every request.",
    )


_DATATYPES = "BOOL|INT8|INT16|INT32|INT64|UINT8|UINT16|UINT32|UINT64|FP16|FP32|FP64|BYTES"


class StaticOutput(BaseModel):
    """One output tensor of a static fallback answer, as the inference protocol writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="The output's name.")
    datatype: str = Field(pattern=rf"^({_DATATYPES})$", description="Its protocol datatype.")
    shape: list[int] = Field(description="Its shape, e.g. [1, 1].")
    data: list[bool | int | float | str] = Field(description="Its elements, flat, row-major.")

    @model_validator(mode="after")
    def _data_fits_shape(self) -> Self:
        count = 1
        for dim in self.shape:
            if dim < 0:
                raise ValueError(f"output {self.name!r}: a shape has no negative dimension")
            count *= dim
        if count != len(self.data):
            raise ValueError(
                f"output {self.name!r}: shape {self.shape} holds {count} elements, "
                f"data has {len(self.data)}"
            )
        return self


class Fallback(BaseModel):
    """What answers when a route's model cannot: another version, another model, or a
    static answer (exactly one). The gateway runs it; its answer carries the
    ``x-aimesh-fallback`` header (:data:`aimesh.resilience.FALLBACK_HEADER`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        default=None,
        min_length=1,
        description="Another model to ask (its version with `version`, else its default).",
    )
    version: str | None = Field(
        default=None,
        min_length=1,
        description="A version (number or alias) to ask: of `model`, else of the route's own "
        "model (for example the previous champion).",
    )
    outputs: list[StaticOutput] | None = Field(
        default=None, min_length=1, description="A static answer: these output tensors."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        asks = self.model is not None or self.version is not None
        if asks == (self.outputs is not None):
            raise ValueError(
                "a fallback is another version (version), another model (model, optionally "
                "version) or a static answer (outputs): give exactly one kind"
            )
        return self

    @property
    def kind(self) -> Literal["version", "model", "static"]:
        """Which of the three it is."""
        if self.outputs is not None:
            return "static"
        return "model" if self.model is not None else "version"


class RouteResilience(BaseModel):
    """What one route (a model's or a service's name) changes of the resilience defaults.

    Each section is partial: the settings it names replace the defaults', the others stay.
    """

    model_config = ConfigDict(extra="forbid")

    breaker: BreakerSettings | None = Field(default=None, description="Breaker settings.")
    retry: RetrySettings | None = Field(default=None, description="Retry settings.")
    bulkhead: BulkheadSettings | None = Field(default=None, description="Bulkhead settings.")
    timeout_s: float | None = Field(
        default=None, gt=0, le=3600, description="Timeout of one call to an instance."
    )
    fallback: Fallback | None = Field(
        default=None, description="What answers when the model cannot (none by default)."
    )


class ResilienceSettings(BaseModel):
    """The gateway's resilience layer: deadline, retry, breaker, bulkhead, in that order.

    ``routes`` overrides any section for one route, by the name the gateway routes by (a
    model's name, or a service's), e.g. ``routes: {fraud: {breaker: {open_s: 10}}}``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Off: upstream calls go without breakers, ejection, retries or "
        "bulkheads (a refused instance is still passed over), e.g. to measure their cost.",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Timeout of one call to an instance (never beyond the request's "
        "deadline). Unset: gateway.upstream_timeout_s.",
    )
    breaker: BreakerSettings = Field(
        default_factory=BreakerSettings, description="Circuit breakers per route and version."
    )
    outlier: OutlierSettings = Field(
        default_factory=OutlierSettings, description="Ejection of failing instances."
    )
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retries.")
    bulkhead: BulkheadSettings = Field(
        default_factory=BulkheadSettings, description="Requests in flight per instance."
    )
    routes: dict[str, RouteResilience] = Field(
        default_factory=dict,
        description="Overrides by route (a model's or a service's name): breaker, retry, "
        "bulkhead and timeout_s sections replace the settings they name; fallback declares "
        "what answers when the model cannot.",
    )

    @model_validator(mode="after")
    def _every_route_is_whole(self) -> Self:
        _check_sections(self, "")
        for name in self.routes:
            if not name.strip():
                raise ValueError("routes: a route is named by a model's or a service's name")
            _check_sections(self.for_route(name), f"routes.{name}.")
        return self

    def for_route(self, name: str) -> ResilienceSettings:
        """These settings with the overrides of route ``name`` applied (``routes`` emptied)."""
        override = self.routes.get(name)
        if override is None:
            return self if not self.routes else self.model_copy(update={"routes": {}})
        update: dict[str, Any] = {"routes": {}}
        for section in ("breaker", "retry", "bulkhead"):
            part: BaseModel | None = getattr(override, section)
            if part is not None:
                base: BaseModel = getattr(self, section)
                # Only what the route names replaces the default (model_fields_set).
                update[section] = base.model_copy(update=part.model_dump(exclude_unset=True))
        if override.timeout_s is not None:
            update["timeout_s"] = override.timeout_s
        return self.model_copy(update=update)

    def fallback_for(self, name: str) -> Fallback | None:
        """The fallback route ``name`` declares, if any."""
        override = self.routes.get(name)
        return override.fallback if override is not None else None


def _check_sections(settings: ResilienceSettings, where: str) -> None:
    """The rules between fields of one section, on the merged settings of a route."""
    breaker, outlier, retry = settings.breaker, settings.outlier, settings.retry
    if breaker.window == "count" and breaker.min_calls > breaker.window_size:
        raise ValueError(
            f"{where}breaker.min_calls ({breaker.min_calls}) is more than the calls its "
            f"count window holds (window_size {breaker.window_size}): it could never open"
        )
    if outlier.max_ejection_s < outlier.base_ejection_s:
        raise ValueError(
            f"{where}outlier.max_ejection_s must be at least base_ejection_s "
            f"({outlier.base_ejection_s})"
        )
    if retry.backoff_max_s < retry.backoff_s:
        raise ValueError(
            f"{where}retry.backoff_max_s must be at least backoff_s ({retry.backoff_s})"
        )


class GatewaySettings(BaseModel):
    """The gateway: the single entry point in front of every service."""

    host: str = Field(default="127.0.0.1", description="Address the gateway binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="REST port.")
    grpc_port: int = Field(default=8081, ge=0, le=65535, description="gRPC port.")
    max_request_bytes: int = Field(
        default=64 * 1024**2, gt=0, description="Largest request body accepted (413 beyond)."
    )
    upstream_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait for an upstream's answer."
    )
    max_connections_per_upstream: int = Field(
        default=64, ge=1, le=4096, description="Pooled keep-alive connections per upstream."
    )
    resilience: ResilienceSettings = Field(
        default_factory=ResilienceSettings,
        description="Breakers, ejection, retries, bulkheads and fallbacks of upstream calls.",
    )


class JobsSettings(BaseModel):
    """Asynchronous jobs: the jobs service, the workers' consumer loop, retries and webhooks."""

    host: str = Field(default="127.0.0.1", description="Address `aimesh jobs serve` binds.")
    port: int = Field(default=8300, ge=0, le=65535, description="Port `aimesh jobs serve` binds.")
    ack_wait_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="A job whose worker stops heartbeating for this long goes to another "
        "worker. Workers heartbeat every third of it.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="Attempts of a job that does not set its own."
    )
    backoff_s: float = Field(
        default=1.0, ge=0, le=3600, description="Wait before the first retry; doubles after."
    )
    backoff_max_s: float = Field(default=60.0, ge=0, le=86400, description="Longest retry wait.")
    concurrency: int = Field(
        default=1, ge=1, le=1024, description="Jobs one `aimesh worker` runs at once."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Native threads (OpenMP, BLAS, onnxruntime) in one `aimesh worker`; "
        "unset: every core (`aimesh up`: the cores divided among every model process).",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On shutdown, wait this long for running jobs, then hand them back.",
    )
    progress_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="Shortest interval between two progress writes."
    )
    claim_after_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="A job on its first delivery starts at once and is marked running only "
        "after this long (or when it reports progress): one that ends sooner has its record "
        "written once, queued to its outcome. 0 marks every job running before it starts.",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, gt=0, le=1024**2, description="Largest job payload, as JSON."
    )
    max_request_bytes: int = Field(
        default=1024**2,
        gt=0,
        description="Largest JSON request body (413 beyond); a submission is also bounded by "
        "max_payload_bytes.",
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Requests in flight in one jobs service; more are refused (503 overloaded, "
        "with Retry-After). An event stream (SSE) counts for as long as it is open, and streams "
        "hold at most half of them. /health and the docs are never refused.",
    )
    max_result_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        le=1024**2,
        description="Largest result kept in the job record; larger ones belong in a store, "
        "referenced by `result_ref`.",
    )
    default_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="An attempt of a job that sets no timeout_s, of a kind `timeouts_s` does "
        "not name, is stopped after this long; nothing it does afterwards takes effect.",
    )
    timeouts_s: dict[str, Annotated[float, Field(gt=0, le=7 * 24 * 3600)]] = Field(
        default_factory=lambda: {"training": 3600.0, "inference": 60.0},
        description="Default attempt timeout by job kind, for jobs that set no timeout_s "
        "(setting it replaces the whole table; kinds it omits get default_timeout_s).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 signature (X-Aimesh-Signature) on webhook "
        "calls. Unset: webhooks are sent unsigned.",
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Timeout of one webhook call."
    )
    webhook_attempts: int = Field(
        default=3, ge=1, le=20, description="Calls of a webhook before giving up on it."
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="Hosts, IP addresses and CIDR networks webhooks may call although they "
        "are loopback, private, link-local or metadata addresses (refused otherwise, with "
        "url_refused), e.g. [hooks.internal, 10.1.0.0/16, 127.0.0.1].",
    )

    @field_validator("webhook_allow")
    @classmethod
    def _hosts_or_networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            text = entry.strip().strip("[]")
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                if not _HOST.fullmatch(text):
                    raise ValueError(
                        f"{entry!r} is not a host name, an IP address or a CIDR network"
                    ) from None
        return entries

    @field_validator("timeouts_s")
    @classmethod
    def _kinds(cls, timeouts: dict[str, float]) -> dict[str, float]:
        for kind in timeouts:
            if not _KIND.fullmatch(kind):
                raise ValueError(f"{kind!r} is not a job kind")
        return timeouts

    def timeout_for(self, kind: str) -> float:
        """The attempt timeout of a job of ``kind`` that sets none itself."""
        return self.timeouts_s.get(kind, self.default_timeout_s)


class TrainingSettings(BaseModel):
    """Training workers: which code a training job may name."""

    allowed_trainers: list[str] = Field(
        default_factory=list,
        description="module:Class trainers a job may name beside the built-in ones "
        "(scikit-learn, XGBoost and LightGBM estimators), as module:Class or module:* "
        "patterns, e.g. [mycompany.models:*]. Anything else is refused before it is "
        "imported; functions marked @aimesh.training.trainer need no entry.",
    )

    @field_validator("allowed_trainers")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not _TRAINER_PATTERN.fullmatch(pattern):
                raise ValueError(f"{pattern!r} is not a module:Class or module:* pattern")
        return patterns


class ModelServiceSpec(BaseModel):
    """A model service `aimesh up` runs: a model reference, replicas, workers, batching."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="NAME@ALIAS, NAME@VERSION or NAME.")
    replicas: int = Field(default=1, ge=1, le=32, description="Separate processes, own ports.")
    workers: int = Field(default=1, ge=1, le=64, description="Processes per replica (one port).")
    batching: bool | None = Field(default=None, description="Unset: serving.batching.")
    max_batch_size: int | None = Field(default=None, ge=1, description="Unset: serving default.")
    max_latency_ms: float | None = Field(default=None, ge=0, description="Unset: serving default.")


class WorkerSpec(BaseModel):
    """Job workers `aimesh up` runs: a job kind, how many processes, jobs at once in each."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,63}$",
        description="The job kind: inference (async model calls), training, or your own.",
    )
    replicas: int = Field(default=1, ge=1, le=64, description="Separate worker processes.")
    concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="Jobs one process runs at once; unset: jobs."
    )
    handler: str | None = Field(
        default=None, description="module:function for a kind of your own (unset: built-in)."
    )


def _default_workers() -> list[WorkerSpec]:
    return [WorkerSpec(kind="inference", concurrency=8), WorkerSpec(kind="training")]


class ServicesSettings(BaseModel):
    """What `aimesh up` starts, in this order: registry, lake, jobs, models, workers, the
    rollout controller, gateway."""

    model_config = ConfigDict(extra="forbid")

    registry: bool = Field(default=True, description="Run the registry service.")
    lake: bool = Field(default=True, description="Run the lake service (/api/lake).")
    jobs: bool = Field(default=True, description="Run the jobs service (/api/jobs).")
    controller: bool = Field(
        default=True,
        description="Run the rollout controller (judges canaries, promotes or rolls back).",
    )
    gateway: bool = Field(default=True, description="Run the gateway.")
    models: list[ModelServiceSpec] = Field(default_factory=list, description="Model services.")
    workers: list[WorkerSpec] = Field(
        default_factory=_default_workers,
        description="Job workers; by default one for async inference and one for training.",
    )

    @field_validator("workers")
    @classmethod
    def _one_entry_per_kind(cls, workers: list[WorkerSpec]) -> list[WorkerSpec]:
        kinds = [w.kind for w in workers]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"kind {twice[0]} is declared twice; give one entry more replicas")
        return workers


class LakeSettings(BaseModel):
    """The data lake: where its Delta tables live, ingest chunks, query limits, the service."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="Folder or object-store URL (s3://bucket/lake) holding one Delta table "
        "per dataset. Unset: HOME/lake.",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Passed to delta-rs for an object store: on S3 AWS_REGION, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and for an S3-compatible store "
        "AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true without TLS); unset keys come from the "
        "environment. No lock service is needed: commits use S3's conditional writes.",
    )
    chunk_rows: int = Field(
        default=131_072,
        ge=1_024,
        le=16_777_216,
        description="Rows per chunk read from a source and per Parquet row group written: "
        "what bounds an ingest's memory.",
    )
    chunk_bytes: int = Field(
        default=8 * 1024**2,
        ge=64 * 1024,
        le=1024**3,
        description="Bytes of CSV or JSON read per block (types are inferred from the first).",
    )
    query_rows: int = Field(
        default=1_000, ge=1, description="Rows a query returns when it asks for no limit."
    )
    max_query_rows: int = Field(
        default=100_000, ge=1, description="Most rows one query may return over REST."
    )
    query_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="A query still running after this is stopped."
    )
    query_memory_limit: str = Field(
        default="1GB",
        pattern=r"(?i)^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$",
        description="Memory one query may use (DuckDB's memory_limit, e.g. '512MB', '2GB'). "
        "A query that needs more spills to HOME/lake-tmp where it can, else fails with "
        "query_too_large (422); the service keeps serving.",
    )
    max_concurrent_queries: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Queries (and exports) one lake service runs at once; with "
        "query_memory_limit, what bounds the memory queries take together.",
    )
    query_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="How long a query waits for a free slot when max_concurrent_queries run; "
        "then it is refused with 503 query_busy and a Retry-After header.",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest file accepted by an ingest upload."
    )
    max_request_bytes: int = Field(
        default=1024**2,
        gt=0,
        description="Largest JSON request body, e.g. a query (413 beyond); uploads have "
        "max_upload_bytes.",
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Requests in flight in one lake service, uploads and queries waiting for a "
        "slot included; more are refused (503 overloaded, with Retry-After). /health and the "
        "docs are never refused.",
    )
    host: str = Field(default="127.0.0.1", description="Address `aimesh lake serve` binds.")
    port: int = Field(default=8200, ge=0, le=65535, description="Port `aimesh lake serve` binds.")
    sink_batch_rows: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Rows a bus sink gathers before it commits them.",
    )
    sink_batch_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds after a batch's first row when a sink commits it anyway.",
    )
    sink_ack_wait_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A message a sink took but did not acknowledge is redelivered after this.",
    )
    sink_max_age_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Age at which a stream the sink creates for its subject drops messages.",
    )
    sink_max_bytes: int = Field(
        default=1024**3,
        ge=1024**2,
        description="Size limit of a stream the sink creates for its subject; when full, the "
        "oldest messages are dropped (whether the sink has read them or not), so publishers "
        "are never refused. Size it to hold what arrives while a sink is stopped.",
    )


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
    jobs: JobsSettings = Field(default_factory=JobsSettings, description="Asynchronous jobs.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="Training workers."
    )
    services: ServicesSettings = Field(
        default_factory=ServicesSettings, description="What `aimesh up` runs."
    )
    lake: LakeSettings = Field(default_factory=LakeSettings, description="The data lake.")
    auth: AuthSettings = Field(
        default_factory=AuthSettings,
        description="API keys, the service credential and the services' HTTP edge.",
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
        project = _project.get()
        if project is None:
            return init_settings, env_settings
        from_file = InitSettingsSource(settings_cls, init_kwargs=project.data)
        if not project.with_environment:
            return (from_file,)
        return init_settings, env_settings, from_file

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

    @property
    def lake_url(self) -> str:
        """Where the lake's tables live, defaulting to a folder in the home."""
        return self.lake.url or str(self.home_dir / "lake")


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
    """Build the settings from defaults, the project file, the environment and overrides.

    Every problem is reported at once, one a line, those of the project file with their
    line (``aimesh.yaml:7: gateway.prot: unknown setting (did you mean port?)``); unknown keys
    are problems at any depth.
    """
    path = find_config_file(config_file)
    project = ProjectFile.read(path) if path is not None else None
    data, problems = project.check_keys(Settings) if project is not None else ({}, [])
    token = _project.set(_FileSource(data) if project is not None else None)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems += _explain(exc, project, data)
    finally:
        _project.reset(token)
    if problems:
        # The file's problems first, in line order; then those of the environment.
        lines = [str(p) for p in sorted(problems, key=lambda p: (p.line == 0, p.line, p.loc))]
        raise ConfigError("\n".join(lines), problems=lines)
    return settings


def _explain(
    exc: ValidationError, project: ProjectFile | None, data: dict[str, Any]
) -> list[Problem]:
    """Each validation error, at its line when the project file alone causes it."""
    from_file: set[tuple[tuple[str | int, ...], str]] = set()
    if project is not None:
        # The same error from the file alone is the file's; others come from the environment
        # or the arguments, where a line number would point at the wrong place.
        token = _project.set(_FileSource(data, with_environment=False))
        try:
            Settings()
        except ValidationError as alone:
            from_file = {(tuple(e["loc"]), e["type"]) for e in alone.errors()}
        finally:
            _project.reset(token)
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        said = _in_our_words(error)
        if project is not None and (loc, error["type"]) in from_file:
            problems.append(project.problem(loc, said))
        else:
            problems.append(Problem(0, ".".join(str(p) for p in loc), said))
    return problems


# pydantic's error types are its stable interface; its sentences change between releases
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "greater_than": ("gt", "must be more than {}"),
    "less_than": ("lt", "must be less than {}"),
}


def _in_our_words(error: Any) -> str:
    """aimesh's sentence for the commonest validation errors, pydantic's for the others."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, sentence = _BOUNDS[kind]
        return sentence.format(ctx[key])
    if kind == "literal_error" and "expected" in ctx:
        return f"must be one of {ctx['expected']}"
    return str(error["msg"])

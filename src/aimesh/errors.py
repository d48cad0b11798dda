"""The error tree of aimesh.

Every error a user can see is an :class:`AimeshError` with a stable machine-readable
``code``. Adapters own the mapping from class to transport status: one HTTP table
(:mod:`aimesh.rest.status`), one gRPC table (:mod:`aimesh.protocol.grpc.status`), the CLI's
exit code; a class not listed there takes its family's status. Nothing in here knows about
HTTP numbers.

::

    AimeshError
    ├── ConfigError                  config_invalid
    │   └── InsecureBind             insecure_bind
    ├── InvalidRequest               invalid_request
    │   ├── InvalidName              invalid_name
    │   ├── RequestTooLarge          request_too_large
    │   ├── UnsupportedMediaType     unsupported_media_type
    │   ├── HostRefused              host_refused
    │   ├── InputMismatch            input_mismatch
    │   ├── DatatypeMismatch         datatype_mismatch
    │   ├── ShapeMismatch            shape_mismatch
    │   ├── JobRejected              job_rejected
    │   ├── SchemaMismatch           schema_mismatch
    │   ├── InvalidData              invalid_data
    │   ├── QueryRefused             query_refused
    │   ├── UrlRefused               url_refused
    │   ├── QueryError               invalid_query
    │   ├── QueryTooLarge            query_too_large
    │   └── TrustDisabled            trust_disabled
    ├── NotFound                     not_found
    │   ├── ModelNotFound            model_not_found
    │   ├── VersionNotFound          version_not_found
    │   ├── AliasNotFound            alias_not_found
    │   ├── ArtifactNotFound         artifact_not_found
    │   ├── JobNotFound              job_not_found
    │   ├── KeyNotFound              key_not_found
    │   ├── KindNotFound             kind_not_found
    │   ├── RecordNotFound           record_not_found
    │   ├── DatasetNotFound          dataset_not_found
    │   ├── DatasetVersionNotFound   dataset_version_not_found
    │   ├── DatasetVersionGone       dataset_version_gone
    │   ├── ResultExpired            result_expired
    │   └── RouteNotFound            route_not_found
    ├── MethodNotAllowed             method_not_allowed
    ├── Conflict                     conflict
    │   ├── ModelExists              model_exists
    │   ├── KeyExists                key_exists
    │   ├── MetricExists             metric_exists
    │   ├── VersionArchived          version_archived
    │   ├── JobFinished              job_finished
    │   ├── JobNotRetryable          job_not_retryable
    │   ├── IdempotencyConflict      idempotency_conflict
    │   ├── JobPending               job_pending
    │   ├── LeaseHeld                lease_held
    │   ├── RecordExists             record_exists
    │   ├── RecordConflict           record_conflict
    │   ├── NoPreviousVersion        no_previous_version
    │   ├── AliasMoved               alias_moved
    │   └── RolloutStateConflict     rollout_state
    ├── ArtifactError                artifact_invalid
    │   ├── ArtifactTooLarge         artifact_too_large
    │   ├── ArtifactDigestMismatch   artifact_digest_mismatch
    │   ├── ArtifactTampered         artifact_tampered
    │   ├── UnsafeArtifact           unsafe_artifact
    │   └── UntrustedTypes           untrusted_types
    ├── RuntimeUnavailable           runtime_unavailable
    ├── Unauthorized                 unauthorized
    ├── Forbidden                    forbidden
    ├── OriginRefused                origin_refused
    ├── Overloaded                   overloaded
    │   └── RateLimited              rate_limited
    │       └── AuthThrottled        auth_throttled
    ├── Unavailable                  unavailable
    │   ├── QueueFull                queue_full
    │   ├── ShuttingDown             shutting_down
    │   ├── NoInstance               no_instance
    │   ├── CircuitOpen              circuit_open
    │   ├── QueryBusy                query_busy
    │   ├── BusUnavailable           bus_unavailable
    │   └── StoreUnavailable         store_unavailable
    ├── UpstreamError                upstream_error
    │   └── UpstreamTimeout          upstream_timeout
    ├── DeadlineExceeded             deadline_exceeded
    │   └── QueryTimeout             query_timeout
    └── JobFailed                    job_failed
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar


class AimeshError(Exception):
    """The root of every error aimesh raises on purpose."""

    code: ClassVar[str] = "aimesh_error"
    retry_after_s: float | None = None
    """When retrying may succeed, in seconds (an HTTP answer says it in ``Retry-After``)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON body every REST adapter returns for this error."""
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(AimeshError):
    """Raised when settings or a project file are invalid."""

    code = "config_invalid"


class InsecureBind(ConfigError):
    """Raised when a service is told to bind a non-loopback address while no API key exists.

    The operator may accept the exposure with ``--insecure`` (``auth.insecure``).
    """

    code = "insecure_bind"

    def __init__(self, host: str, service: str) -> None:
        super().__init__(
            f"{service} refuses to bind {host}: no API key exists, so anyone who can reach "
            f"{host} could use it. Bind 127.0.0.1, create a key, or accept the exposure "
            "with --insecure (auth.insecure: true for `aimesh up`)",
            host=host,
            service=service,
        )
        self.host = host
        self.service = service


class InvalidRequest(AimeshError):
    """Raised when a request is malformed or violates a documented limit."""

    code = "invalid_request"


class TrustDisabled(InvalidRequest):
    """Raised when a push needs trust (a code-running format, extra skops types) and the
    registry's policy (``registry.allow_code_artifacts``) does not allow any."""

    code = "trust_disabled"


class InvalidName(InvalidRequest):
    """Raised when a model, alias or dataset name is not a safe identifier."""

    code = "invalid_name"


class RequestTooLarge(InvalidRequest):
    """Raised when a request body exceeds the configured limit."""

    code = "request_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"request of {size} bytes exceeds the limit of {limit}", size=size, limit=limit
        )
        self.size = size
        self.limit = limit


class UnsupportedMediaType(InvalidRequest):
    """Raised when a request body's Content-Type is not one the endpoint reads."""

    code = "unsupported_media_type"

    def __init__(self, content_type: str | None, accepted: str) -> None:
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        super().__init__(
            f"{given}: this endpoint reads {accepted}",
            content_type=content_type,
            accepted=accepted,
        )
        self.content_type = content_type
        self.accepted = accepted


class HostRefused(InvalidRequest):
    """Raised when a request's Host header names none of the names the service answers to.

    A browser tricked by DNS rebinding sends the attacker's name here; list a deployment's
    own names in ``auth.allowed_hosts``.
    """

    code = "host_refused"

    def __init__(self, host: str) -> None:
        super().__init__(
            f"Host {host!r} is not a name this service answers to (add it to auth.allowed_hosts)",
            host=host,
        )
        self.host = host


class InputMismatch(InvalidRequest):
    """Raised when a request's input or output names do not match the model's signature."""

    code = "input_mismatch"


class DatatypeMismatch(InvalidRequest):
    """Raised when an input tensor's datatype is not the one the signature declares."""

    code = "datatype_mismatch"


class ShapeMismatch(InvalidRequest):
    """Raised when an input tensor's shape does not fit the signature."""

    code = "shape_mismatch"


class JobRejected(InvalidRequest):
    """Raised by a job handler when its job can never succeed (a bad payload): no retries."""

    code = "job_rejected"


class SchemaMismatch(InvalidRequest):
    """Raised when data does not fit a dataset's schema; nothing was written."""

    code = "schema_mismatch"

    def __init__(self, dataset: str, problems: list[str], *, hint: str = "") -> None:
        super().__init__(
            f"data does not fit the schema of dataset {dataset!r}: {'; '.join(problems)}"
            f" (nothing was written{'; ' + hint if hint else ''})",
            dataset=dataset,
            problems=problems,
            hint=f"nothing was written{'; ' + hint if hint else ''}",
        )
        self.dataset = dataset
        self.problems = problems


class InvalidData(InvalidRequest):
    """Raised when a source file cannot be read as its format (a bad CSV row, broken JSON)."""

    code = "invalid_data"


class QueryRefused(InvalidRequest):
    """Raised when a lake query is not a single read-only statement (or reaches outside)."""

    code = "query_refused"


class UrlRefused(InvalidRequest):
    """Raised when a user-supplied URL (a webhook) is not one aimesh may call: a scheme other
    than http(s), user info, or a host that resolves to a loopback, private, link-local or
    metadata address the operator did not allow."""

    code = "url_refused"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"URL {url[:200]!r} refused: {reason}", url=url[:200], reason=reason)
        self.url = url
        self.reason = reason


class QueryError(InvalidRequest):
    """Raised when the query engine rejects a query (syntax, unknown column, bad types)."""

    code = "invalid_query"


class QueryTooLarge(InvalidRequest):
    """Raised when a lake query needs more memory than one query may use; it was stopped."""

    code = "query_too_large"

    def __init__(self, limit: str) -> None:
        super().__init__(
            f"the query needs more memory than one query may use ({limit}): read fewer rows "
            "or columns, aggregate first, or raise lake.query_memory_limit",
            limit=limit,
        )
        self.limit = limit


class NotFound(AimeshError):
    """Raised when a named object does not exist."""

    code = "not_found"


class ModelNotFound(NotFound):
    """Raised when no model has the given name."""

    code = "model_not_found"


class VersionNotFound(NotFound):
    """Raised when a model has no version with the given number."""

    code = "version_not_found"


class AliasNotFound(NotFound):
    """Raised when a model has no alias with the given name."""

    code = "alias_not_found"


class ArtifactNotFound(NotFound):
    """Raised when the artifact store holds no blob with the given sha256."""

    code = "artifact_not_found"


class KeyNotFound(NotFound):
    """Raised when no active API key has the given name (never made, or revoked)."""

    code = "key_not_found"


class KindNotFound(NotFound):
    """Raised when asked for a registry record kind no definition registered."""

    code = "kind_not_found"

    def __init__(self, kind: str) -> None:
        super().__init__(f"the registry has no record kind {kind!r}", kind=kind)
        self.kind = kind


class RecordNotFound(NotFound):
    """Raised when a registry record kind has no record of the given name."""

    code = "record_not_found"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"no {kind} named {name!r}", kind=kind, name=name)
        self.kind = kind
        self.name = name


class JobNotFound(NotFound):
    """Raised when no job has the given id (never submitted, or expired from the bus)."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}", job_id=job_id)
        self.job_id = job_id


class ResultExpired(NotFound):
    """Raised when a job's result was kept for a while and is gone now."""

    code = "result_expired"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the result of job {job_id} has expired", job_id=job_id)
        self.job_id = job_id


class DatasetNotFound(NotFound):
    """Raised when the lake has no dataset with the given name."""

    code = "dataset_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no dataset named {name!r}", name=name)
        self.name = name


class DatasetVersionNotFound(NotFound):
    """Raised when a dataset has no such version (never written, or cleaned up)."""

    code = "dataset_version_not_found"

    def __init__(self, name: str, version: int, latest: int) -> None:
        super().__init__(
            f"dataset {name!r} has no version {version} (the latest is {latest})",
            name=name,
            version=version,
            latest=latest,
        )
        self.name = name
        self.version = version
        self.latest = latest


class DatasetVersionGone(NotFound):
    """Raised when a dataset version's data files are deleted (a vacuum removed them)."""

    code = "dataset_version_gone"

    def __init__(self, name: str, version: int, latest: int, missing: str) -> None:
        super().__init__(
            f"dataset {name!r} version {version} can no longer be read: its data files were "
            "deleted (a vacuum deletes the files of versions older than its retention); "
            f"read a newer version (the latest is {latest})",
            name=name,
            version=version,
            latest=latest,
            missing=missing,
        )
        self.name = name
        self.version = version
        self.latest = latest
        self.missing = missing


class RouteNotFound(NotFound):
    """Raised for a path a service has no route for."""

    code = "route_not_found"


class MethodNotAllowed(AimeshError):
    """Raised for a method the route does not take; ``allowed`` names every one it does
    (an HTTP answer says them in ``Allow``)."""

    code = "method_not_allowed"

    def __init__(self, method: str, allowed: Sequence[str]) -> None:
        super().__init__(f"use {' or '.join(allowed)}, not {method}", allowed=list(allowed))
        self.method = method
        self.allowed = tuple(allowed)


class Conflict(AimeshError):
    """Raised when a change conflicts with what is already stored."""

    code = "conflict"


class ModelExists(Conflict):
    """Raised when creating a model whose name is taken."""

    code = "model_exists"


class KeyExists(Conflict):
    """Raised when creating an API key whose name an active (unrevoked) key holds."""

    code = "key_exists"


class MetricExists(Conflict):
    """Raised when a version's metric would be overwritten (versions are immutable)."""

    code = "metric_exists"


class VersionArchived(Conflict):
    """Raised when an alias would point at an archived version."""

    code = "version_archived"


class JobFinished(Conflict):
    """Raised when cancelling a job that has already succeeded or failed."""

    code = "job_finished"

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} has already {state}", job_id=job_id, state=state)
        self.job_id = job_id
        self.state = state


class JobNotRetryable(Conflict):
    """Raised when retrying a job that has not failed or been cancelled."""

    code = "job_not_retryable"

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id} is {state}: only a failed or cancelled job can be retried "
            "(submit a new one to run it again)",
            job_id=job_id,
            state=state,
        )
        self.job_id = job_id
        self.state = state


class LeaseHeld(Conflict):
    """Raised when another process holds the lease of what was to be started (a lake sink)."""

    code = "lease_held"

    def __init__(self, what: str, holder: str) -> None:
        super().__init__(
            f"{what} runs already ({holder}): stop it first, or wait for its lease to lapse "
            "if it died",
            what=what,
            holder=holder,
        )
        self.what = what
        self.holder = holder


class RecordExists(Conflict):
    """Raised when creating a registry record whose kind has one of that name already."""

    code = "record_exists"

    def __init__(self, kind: str, name: str, revision: int) -> None:
        super().__init__(
            f"a {kind} named {name!r} exists (revision {revision}); replace it instead",
            kind=kind,
            name=name,
            revision=revision,
        )
        self.kind = kind
        self.name = name
        self.revision = revision


class RecordConflict(Conflict):
    """Raised when a record is written or deleted at a revision it is no longer at: someone
    changed it since the caller read it (optimistic concurrency)."""

    code = "record_conflict"

    def __init__(self, kind: str, name: str, expected: int, revision: int | None) -> None:
        now = f"is at revision {revision}" if revision is not None else "does not exist"
        super().__init__(
            f"{kind} {name!r} {now}, not {expected}: read it again and retry",
            kind=kind,
            name=name,
            expected=expected,
            revision=revision,
        )
        self.kind = kind
        self.name = name
        self.expected = expected
        self.revision = revision


class NoPreviousVersion(Conflict):
    """Raised when rolling back an alias whose history holds no version before its current."""

    code = "no_previous_version"

    def __init__(self, model: str, alias: str) -> None:
        super().__init__(
            f"{model}@{alias} has no previous version to roll back to", model=model, alias=alias
        )
        self.model = model
        self.alias = alias


class AliasMoved(Conflict):
    """Raised when an alias is not at the version the caller expected it at (it moved)."""

    code = "alias_moved"

    def __init__(self, model: str, alias: str, expected: int, version: int) -> None:
        super().__init__(
            f"{model}@{alias} is at version {version}, not {expected}: it moved meanwhile",
            model=model,
            alias=alias,
            expected=expected,
            version=version,
        )
        self.model = model
        self.alias = alias
        self.expected = expected
        self.version = version


class RolloutStateConflict(Conflict):
    """Raised when a rollout cannot do what was asked in its state (pausing one that is
    over, promoting a split), or a model that has a running policy is given another."""

    code = "rollout_state"


class ArtifactError(AimeshError):
    """Raised when an artifact cannot be read or understood by its runtime."""

    code = "artifact_invalid"


class ArtifactTooLarge(ArtifactError):
    """Raised when an upload exceeds the configured artifact size limit."""

    code = "artifact_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"artifact exceeds the limit of {limit} bytes", size=size, limit=limit)
        self.size = size
        self.limit = limit


class ArtifactDigestMismatch(ArtifactError):
    """Raised when uploaded bytes do not hash to the sha256 the client declared."""

    code = "artifact_digest_mismatch"

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            f"upload is corrupted: expected sha256 {expected}, got {actual}",
            expected=expected,
            actual=actual,
        )
        self.expected = expected
        self.actual = actual


class ArtifactTampered(ArtifactError):
    """Raised when a stored artifact no longer hashes to its recorded sha256."""

    code = "artifact_tampered"

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact {expected[:12]} was modified after it was stored (now {actual[:12]}); "
            "refusing to load it",
            expected=expected,
            actual=actual,
        )
        self.expected = expected
        self.actual = actual


class UnsafeArtifact(ArtifactError):
    """Raised when a format that runs code on load (pickle, Python) is pushed without trust."""

    code = "unsafe_artifact"


class UntrustedTypes(ArtifactError):
    """Raised when a skops file holds types that are not on the trusted list."""

    code = "untrusted_types"

    def __init__(self, types: list[str]) -> None:
        super().__init__(
            "artifact holds types that are not trusted: "
            + ", ".join(types)
            + " (push with --trust-type NAME for each, after checking them)",
            types=types,
        )
        self.types = types


class RuntimeUnavailable(AimeshError):
    """Raised when a framework is unknown or its optional dependency is not installed."""

    code = "runtime_unavailable"


class Unauthorized(AimeshError):
    """Raised when a request needs an API key and carries none, or an unknown one."""

    code = "unauthorized"


class Forbidden(AimeshError):
    """Raised when a known API key (or the identity it acts for) lacks the scope a route needs."""

    code = "forbidden"

    def __init__(self, key: str, scope: str) -> None:
        super().__init__(f"key {key!r} lacks the {scope!r} scope", key=key, scope=scope)
        self.key = key
        self.scope = scope


class OriginRefused(AimeshError):
    """Raised when a changing request comes from a browser page of a foreign origin.

    Allowed: no ``Origin`` (CLI, servers), the service's own pages, ``auth.allowed_origins``.
    """

    code = "origin_refused"

    def __init__(self, origin: str) -> None:
        super().__init__(
            f"requests that change things from the browser origin {origin!r} are refused "
            "(add it to auth.allowed_origins)",
            origin=origin,
        )
        self.origin = origin


class Overloaded(AimeshError):
    """Raised when a service already has as many requests in flight as it allows.

    The service is full, not the caller at fault: HTTP answers 503 with ``Retry-After``
    (its kinds, a key's or a client's own budget spent, answer 429).
    """

    code = "overloaded"
    retry_after_s: float | None = 1.0


class RateLimited(Overloaded):
    """Raised when an API key has spent its request budget (token bucket) for now."""

    code = "rate_limited"

    def __init__(self, key: str, retry_after_s: float) -> None:
        super().__init__(
            f"key {key!r} is over its rate limit; retry in {retry_after_s:.3g}s",
            key=key,
            retry_after_s=retry_after_s,
        )
        self.key = key
        self.retry_after_s: float = retry_after_s


class AuthThrottled(RateLimited):
    """Raised when a client presented too many unknown API keys lately: it must wait."""

    code = "auth_throttled"

    def __init__(self, client: str, retry_after_s: float) -> None:
        Overloaded.__init__(
            self,
            f"too many failed API key attempts from {client}; retry in {retry_after_s:.3g}s",
            client=client,
            retry_after_s=retry_after_s,
        )
        self.key = client
        self.client = client
        self.retry_after_s = retry_after_s


class Unavailable(AimeshError):
    """Raised when a service cannot take a request now (retry later or elsewhere)."""

    code = "unavailable"


class QueueFull(Unavailable):
    """Raised when a model's batch queue is full, or the bus's job queue (the ``AIMESH_JOBS``
    stream, or a jobs KV bucket) is at its size limit and refuses new jobs."""

    code = "queue_full"


class ShuttingDown(Unavailable):
    """Raised for requests that arrive while a service drains before it stops."""

    code = "shutting_down"


class NoInstance(Unavailable):
    """Raised when the registry knows a model (version, alias) that no running instance serves."""

    code = "no_instance"


class CircuitOpen(Unavailable):
    """Raised when a route's circuit breaker is open: the version's recent calls failed, so
    calls to it are refused at once for a while (then a few probe it again).

    ``retry_after_s`` is the time until the breaker lets probes through (an HTTP answer
    says it in ``Retry-After``); a route with a fallback answers from it instead.
    """

    code = "circuit_open"

    def __init__(self, model: str, version: str | None, retry_after_s: float) -> None:
        named = f"{model} version {version}" if version else model
        super().__init__(
            f"calls to {named} are stopped after too many failed or slow calls (circuit "
            f"open); retry in {retry_after_s:.3g}s",
            model=model,
            version=version,
            retry_after_s=retry_after_s,
        )
        self.model = model
        self.version = version
        self.retry_after_s: float = retry_after_s


class QueryBusy(Unavailable):
    """Raised when the lake runs as many queries as it allows and none ended in time."""

    code = "query_busy"

    def __init__(self, running: int, retry_after_s: float = 1.0) -> None:
        super().__init__(
            f"the lake runs {running} queries already (lake.max_concurrent_queries); retry shortly",
            running=running,
        )
        self.running = running
        self.retry_after_s = retry_after_s


class UpstreamError(AimeshError):
    """Raised when an upstream service fails the gateway: refused, reset, or a broken answer."""

    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """Raised when an upstream does not answer within the gateway's upstream timeout."""

    code = "upstream_timeout"


class DeadlineExceeded(AimeshError):
    """Raised when a request's time runs out before the model answered."""

    code = "deadline_exceeded"


class QueryTimeout(DeadlineExceeded):
    """Raised when a lake query runs longer than the query timeout; it was stopped."""

    code = "query_timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"query stopped after {timeout_s:g}s", timeout_s=timeout_s)
        self.timeout_s = timeout_s


class IdempotencyConflict(Conflict):
    """Raised when an idempotency key is submitted again with a different request: the key
    names its first request (whose job it returns when repeated), never another."""

    code = "idempotency_conflict"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"this idempotency key was used for another request (job {job_id}); a repeat must "
            "send the same request, a new request needs a new key",
            job_id=job_id,
        )
        self.job_id = job_id


class JobPending(Conflict):
    """Raised when asking for the result of a job that has not ended yet."""

    code = "job_pending"

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id} is {state}; its result comes when it succeeds", job_id=job_id,
            state=state,
        )  # fmt: skip
        self.job_id = job_id
        self.state = state


class JobFailed(AimeshError):
    """Raised to a caller waiting for a job that ended failed or cancelled."""

    code = "job_failed"

    def __init__(
        self, job_id: str, state: str, error_code: str | None, error_message: str | None
    ) -> None:
        reason = f": {error_message} ({error_code})" if error_message else ""
        super().__init__(
            f"job {job_id} {state}{reason}",
            job_id=job_id,
            state=state,
            error_code=error_code,
            error_message=error_message,
        )
        self.job_id = job_id
        self.state = state
        self.error_code = error_code
        self.error_message = error_message


class BusUnavailable(Unavailable):
    """Raised when the NATS bus cannot be reached or started."""

    code = "bus_unavailable"


class StoreUnavailable(Unavailable):
    """Raised when the registry database, artifact store or lake storage cannot be reached."""

    code = "store_unavailable"


# A URL (scheme://...), or an absolute path of two segments or more: what a foreign
# library's message may name of the server (files, folders, internal addresses).
_SERVER_NAMES = re.compile(
    r"[A-Za-z][\w+.-]*://[^\s'\"`<>]*[^\s'\"`<>:.,;)]"
    r"|(?<![\w.~/-])(?:/[^\s'\"`<>|,;:()\[\]/]+){2,}/?"
)


def foreign_message(exc: BaseException, limit: int = 300, *, lines: int = 1) -> str:
    """The first ``lines`` of a foreign library's error, fit for a user: paths, URLs hidden.

    Errors translated at a boundary may quote the library when its words help the user
    (a syntax error, a column that does not fit); the server's files, folders and internal
    URLs never reach a response. The whole text stays on the exception's ``__cause__``, for
    the log.
    """
    kept = [line.rstrip() for line in str(exc).strip().splitlines() if line.strip()][:lines]
    return hide_server_names("\n".join(kept) if kept else type(exc).__name__)[:limit]


def hide_server_names(text: str) -> str:
    """``text`` with every URL and absolute path in it replaced by ``<hidden>``."""
    return _SERVER_NAMES.sub("<hidden>", text)


def _all_subclasses(cls: type[AimeshError]) -> list[type[AimeshError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


def error_from_body(code: str, message: str, details: dict[str, Any] | None = None) -> AimeshError:
    """Rebuild the error a remote service reported, so clients catch the same classes."""
    by_code = {c.code: c for c in _all_subclasses(AimeshError)}
    cls = by_code.get(code, AimeshError)
    exc = cls.__new__(cls)
    AimeshError.__init__(exc, message, **(details or {}))
    for key, value in (details or {}).items():
        setattr(exc, key, value)
    return exc

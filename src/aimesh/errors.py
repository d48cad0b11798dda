"""The error tree of aimesh.

Every error a user can see is an :class:`AimeshError` with a stable machine-readable
``code``. Adapters own the mapping from code to transport status (HTTP, gRPC, exit code);
nothing in here knows about HTTP numbers.

::

    AimeshError
    ├── ConfigError                  config_invalid
    ├── InvalidRequest               invalid_request
    │   ├── InvalidName              invalid_name
    │   ├── RequestTooLarge          request_too_large
    │   ├── InputMismatch            input_mismatch
    │   ├── DatatypeMismatch         datatype_mismatch
    │   └── ShapeMismatch            shape_mismatch
    ├── NotFound                     not_found
    │   ├── ModelNotFound            model_not_found
    │   ├── VersionNotFound          version_not_found
    │   ├── AliasNotFound            alias_not_found
    │   └── ArtifactNotFound         artifact_not_found
    ├── Conflict                     conflict
    │   ├── ModelExists              model_exists
    │   ├── MetricExists             metric_exists
    │   └── VersionArchived          version_archived
    ├── ArtifactError                artifact_invalid
    │   ├── ArtifactTooLarge         artifact_too_large
    │   ├── ArtifactDigestMismatch   artifact_digest_mismatch
    │   ├── ArtifactTampered         artifact_tampered
    │   ├── UnsafeArtifact           unsafe_artifact
    │   └── UntrustedTypes           untrusted_types
    ├── RuntimeUnavailable           runtime_unavailable
    ├── Overloaded                   overloaded
    ├── Unavailable                  unavailable
    │   ├── QueueFull                queue_full
    │   └── ShuttingDown             shutting_down
    ├── DeadlineExceeded             deadline_exceeded
    ├── BusUnavailable               bus_unavailable
    └── StoreUnavailable             store_unavailable
"""

from __future__ import annotations

from typing import Any, ClassVar


class AimeshError(Exception):
    """The root of every error aimesh raises on purpose."""

    code: ClassVar[str] = "aimesh_error"

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


class InvalidRequest(AimeshError):
    """Raised when a request is malformed or violates a documented limit."""

    code = "invalid_request"


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


class InputMismatch(InvalidRequest):
    """Raised when a request's input or output names do not match the model's signature."""

    code = "input_mismatch"


class DatatypeMismatch(InvalidRequest):
    """Raised when an input tensor's datatype is not the one the signature declares."""

    code = "datatype_mismatch"


class ShapeMismatch(InvalidRequest):
    """Raised when an input tensor's shape does not fit the signature."""

    code = "shape_mismatch"


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


class Conflict(AimeshError):
    """Raised when a change conflicts with what is already stored."""

    code = "conflict"


class ModelExists(Conflict):
    """Raised when creating a model whose name is taken."""

    code = "model_exists"


class MetricExists(Conflict):
    """Raised when a version's metric would be overwritten (versions are immutable)."""

    code = "metric_exists"


class VersionArchived(Conflict):
    """Raised when an alias would point at an archived version."""

    code = "version_archived"


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


class Overloaded(AimeshError):
    """Raised when a service already has as many requests in flight as it allows."""

    code = "overloaded"


class Unavailable(AimeshError):
    """Raised when a service cannot take a request now (retry later or elsewhere)."""

    code = "unavailable"


class QueueFull(Unavailable):
    """Raised when a model's batch queue is full."""

    code = "queue_full"


class ShuttingDown(Unavailable):
    """Raised for requests that arrive while a service drains before it stops."""

    code = "shutting_down"


class DeadlineExceeded(AimeshError):
    """Raised when a request's time runs out before the model answered."""

    code = "deadline_exceeded"


class BusUnavailable(AimeshError):
    """Raised when the NATS bus cannot be reached or started."""

    code = "bus_unavailable"


class StoreUnavailable(AimeshError):
    """Raised when the registry database or artifact store cannot be reached."""

    code = "store_unavailable"


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

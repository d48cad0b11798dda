"""One table per protocol decides the status of every error, by class and family."""

from __future__ import annotations

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aimesh import errors
from aimesh.errors import AimeshError
from aimesh.protocol.grpc import GRPC_STATUS, grpc_status_of
from aimesh.rest import HTTP_STATUS, install_error_handlers, retry_after, status_of


def _every_error() -> list[type[AimeshError]]:
    found: list[type[AimeshError]] = []
    todo: list[type[AimeshError]] = [AimeshError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _instance(cls: type[AimeshError]) -> AimeshError:
    exc = cls.__new__(cls)
    AimeshError.__init__(exc, "boom")
    return exc


@pytest.mark.parametrize("cls", _every_error(), ids=lambda c: c.__name__)
def test_every_error_has_an_http_status_and_a_grpc_status_by_the_one_table(
    cls: type[AimeshError],
) -> None:
    ancestry = [c for c in cls.__mro__ if issubclass(c, AimeshError)]
    listed = next(c for c in ancestry if c in HTTP_STATUS)
    assert status_of(_instance(cls)) == HTTP_STATUS[listed]
    listed_grpc = next(c for c in ancestry if c in GRPC_STATUS)
    assert grpc_status_of(_instance(cls)) == GRPC_STATUS[listed_grpc]
    assert cls.__module__ == "aimesh.errors", "every error class lives in aimesh.errors"
    tree = errors.__doc__ or ""
    assert cls is AimeshError or f"── {cls.__name__} " in tree, "draw it in the error tree"
    assert cls is AimeshError or f" {cls.code}\n" in tree


HTTP_ROWS = [
    (errors.NotFound, 404),
    (errors.ModelNotFound, 404),
    (errors.DatasetNotFound, 404),
    (errors.RouteNotFound, 404),
    (errors.DatasetVersionGone, 410),
    (errors.ResultExpired, 410),
    (errors.MethodNotAllowed, 405),
    (errors.Conflict, 409),
    (errors.ModelExists, 409),
    (errors.KindNotFound, 404),
    (errors.RecordNotFound, 404),
    (errors.RecordExists, 409),
    (errors.RecordConflict, 409),
    (errors.NoPreviousVersion, 409),
    (errors.AliasMoved, 409),
    (errors.LeaseHeld, 409),
    (errors.JobPending, 409),
    (errors.InvalidRequest, 400),
    (errors.QueryError, 400),
    (errors.SchemaMismatch, 422),
    (errors.RequestTooLarge, 413),
    (errors.ArtifactTooLarge, 413),
    (errors.ArtifactError, 422),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.Overloaded, 503),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
    (errors.BusUnavailable, 503),
    (errors.StoreUnavailable, 503),
    (errors.QueueFull, 503),
    (errors.NoInstance, 503),
    (errors.CircuitOpen, 503),
    (errors.DeadlineExceeded, 504),
    (errors.QueryTimeout, 504),
    (errors.UpstreamTimeout, 504),
    (errors.UpstreamError, 502),
    (errors.ConfigError, 500),
    (AimeshError, 500),
]


@pytest.mark.parametrize(("cls", "status"), HTTP_ROWS, ids=lambda v: getattr(v, "__name__", v))
def test_http_status_by_family(cls: type[AimeshError], status: int) -> None:
    assert status_of(_instance(cls)) == status


GRPC_ROWS = [
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ShapeMismatch, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.RequestTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (errors.BusUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (errors.CircuitOpen, grpc.StatusCode.UNAVAILABLE),
    (errors.UpstreamError, grpc.StatusCode.UNAVAILABLE),
    (errors.UpstreamTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RecordNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.RecordExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.RecordConflict, grpc.StatusCode.ABORTED),
    (errors.AliasMoved, grpc.StatusCode.ABORTED),
    (errors.NoPreviousVersion, grpc.StatusCode.FAILED_PRECONDITION),
    (AimeshError, grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("cls", "status"), GRPC_ROWS, ids=lambda v: getattr(v, "__name__", v))
def test_grpc_status_by_family(cls: type[AimeshError], status: grpc.StatusCode) -> None:
    assert grpc_status_of(_instance(cls)) == status


def test_an_unlisted_subclass_inherits_its_family_status() -> None:
    class Local(errors.DatasetVersionGone):
        code = "local"

    assert status_of(Local("x", 1, 2, "m")) == 410
    assert grpc_status_of(Local("x", 1, 2, "m")) == grpc.StatusCode.NOT_FOUND


def test_rate_limited_carries_retry_after_in_whole_seconds() -> None:
    assert retry_after(errors.RateLimited("k", 0.2)) == "1"
    assert retry_after(errors.RateLimited("k", 2.5)) == "3"
    assert retry_after(errors.Overloaded("busy")) == "1"  # a full service: try again soon
    assert retry_after(errors.Unavailable("down")) is None
    assert retry_after(errors.CircuitOpen("fraud", "5", 4.2)) == "5"  # until it probes again


def test_fastapi_services_answer_by_the_table_with_retry_after() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/conflict")
    def conflict() -> None:
        raise errors.ModelExists("model 'm' exists")

    @app.get("/limited")
    def limited() -> None:
        raise errors.RateLimited("k", 1.5)

    client = TestClient(app)
    answer = client.get("/conflict")
    assert answer.status_code == 409
    assert answer.json()["code"] == "model_exists"
    answer = client.get("/limited")
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "2"

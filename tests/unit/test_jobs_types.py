"""Job specs and kinds as a client sends them; handlers as a worker finds them."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest

from aimesh.auth import LOCAL_OPERATOR, Identity
from aimesh.errors import DeadlineExceeded, InvalidName, InvalidRequest, JobRejected, NotFound
from aimesh.jobs import (
    Job,
    JobContext,
    JobSpec,
    get_handler,
    handler_kinds,
    load_handler,
    register_handler,
)
from aimesh.jobs.handlers import call_handler
from aimesh.jobs.types import check_kind

decode = msgspec.json.Decoder(JobSpec).decode


@pytest.mark.parametrize("kind", ["noop", "train-v2", "batch_score", "a"])
def test_valid_kinds(kind: str) -> None:
    assert check_kind(kind) == kind
    assert decode(msgspec.json.encode({"kind": kind})).kind == kind


@pytest.mark.parametrize("kind", ["", "Noop", "a.b", "a*", "a>", "a b", "9lives", "x" * 65])
def test_kinds_that_are_not_subject_tokens_are_refused(kind: str) -> None:
    with pytest.raises(InvalidName):
        check_kind(kind)
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode({"kind": kind}))


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "noop", "colour": "red"}',
        b'{"kind": "noop", "max_attempts": 0}',
        b'{"kind": "noop", "timeout_s": -1}',
        b'{"kind": "noop", "webhook_url": ""}',
        b'{"kind": "noop", "submitted_by": "admin;admin"}',
        b'{"kind": "noop", "payload": [1]}',
        b'{"kind": "noop", "idempotency_key": ""}',
    ],
)
def test_invalid_specs_are_refused(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode(body)


def test_a_spec_becomes_a_queued_record_with_default_attempts() -> None:
    spec = decode(b'{"kind": "sleep", "payload": {"seconds": 1}, "idempotency_key": "k"}')
    job = Job.from_spec(spec, job_id="c" * 32, max_attempts=5)
    assert (job.state, job.max_attempts, job.attempts, job.idempotency_key) == ("queued", 5, 0, "k")
    assert job.payload == {"seconds": 1} and not job.done


def test_a_job_without_a_submitter_is_the_local_operators() -> None:
    job = Job.from_spec(decode(b'{"kind": "noop"}'), job_id="c" * 32, max_attempts=1)
    assert job.submitted_by is None and job.identity == LOCAL_OPERATOR
    reader = Identity.of("dash", ["read"])
    job = Job.from_spec(
        decode(b'{"kind": "noop"}'), job_id="c" * 32, max_attempts=1, submitted_by=reader.header()
    )
    assert job.identity.scopes == reader.scopes and not job.identity.has("write")


def test_builtin_handlers_are_found_by_kind() -> None:
    assert {"noop", "sleep"} <= set(handler_kinds())
    assert get_handler("noop") is load_handler("aimesh.jobs.kinds:noop")
    with pytest.raises(NotFound):
        get_handler("nobody-handles-this")
    with pytest.raises(InvalidRequest):
        load_handler("no-colon")
    with pytest.raises(NotFound):
        load_handler("aimesh.jobs.kinds:missing")


def test_registering_a_second_handler_for_a_kind_is_refused() -> None:
    async def first(ctx: JobContext) -> object:
        return 1

    async def second(ctx: JobContext) -> object:
        return 2

    register_handler("test-twice", first)
    register_handler("test-twice", first)  # the same one again is fine
    with pytest.raises(InvalidRequest):
        register_handler("test-twice", second)
    register_handler("test-twice", second, replace=True)
    assert get_handler("test-twice") is second


def test_plain_handlers_run_in_a_thread_and_report_progress() -> None:
    job = Job.from_spec(JobSpec(kind="noop"), job_id="d" * 32, max_attempts=1)

    def crunch(ctx: JobContext) -> str:
        ctx.progress(0.5, "half")
        return threading.current_thread().name

    async def main() -> tuple[object, tuple[float, str | None] | None]:
        ctx = JobContext(job, 1)
        result = await call_handler(crunch, ctx)
        return result, ctx._take_progress()

    thread, progress = asyncio.run(main())
    assert thread != threading.main_thread().name
    assert progress == (0.5, "half")


def test_sleep_refuses_a_payload_it_cannot_use() -> None:
    sleep = get_handler("sleep")
    job = Job.from_spec(
        JobSpec(kind="sleep", payload={"seconds": "x"}), job_id="e" * 32, max_attempts=1
    )

    async def main() -> object:
        return await call_handler(sleep, JobContext(job, 1))

    with pytest.raises(JobRejected):
        asyncio.run(main())


def test_a_fenced_context_refuses_commits_and_drops_progress() -> None:
    job = Job.from_spec(JobSpec(kind="noop"), job_id="f" * 32, max_attempts=1)

    async def main() -> list[str]:
        done: list[str] = []
        ctx = JobContext(job, 1, timeout_s=60)
        with ctx.commit("first"):
            done.append("first")
        assert not ctx.expired
        # The worker fences at the deadline; nothing was committing then.
        assert ctx._trip() is False
        assert ctx.expired
        with pytest.raises(DeadlineExceeded, match="second not done"), ctx.commit("second"):
            done.append("second")
        ctx.progress(0.9, "late")
        assert ctx._take_progress() is None
        # A deadline passed is a fence even before the worker trips it (a thread sees it).
        late = JobContext(job, 1, timeout_s=1e-9)
        with pytest.raises(DeadlineExceeded, match="timeout"):
            late.check("third")
        return done

    assert asyncio.run(main()) == ["first"]


def test_a_commit_under_way_at_the_fence_is_reported_to_the_worker() -> None:
    job = Job.from_spec(JobSpec(kind="noop"), job_id="f" * 32, max_attempts=1)

    async def main() -> bool:
        ctx = JobContext(job, 1, timeout_s=60)
        with ctx.commit("slow write"):
            return ctx._trip()

    assert asyncio.run(main()) is True

"""Asynchronous jobs on a real bundled nats-server: workers in-process and as subprocesses,
the jobs REST service with SSE, webhooks, and the ``aimesh jobs`` / ``aimesh worker`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import msgspec
import nats.errors
import nats.js.errors
import pytest
from _services import free_port, run_aimesh, start

from aimesh.bus import (
    DISCOVERY_BUCKET,
    DLQ_STREAM,
    JOB_DATA_BUCKET,
    JOBS_BUCKET,
    JOBS_STREAM,
    Bus,
    EmbeddedNats,
    connect,
)
from aimesh.config import JobsSettings
from aimesh.errors import (
    BusUnavailable,
    DeadlineExceeded,
    IdempotencyConflict,
    JobFailed,
    JobFinished,
    JobNotFound,
    JobNotRetryable,
)
from aimesh.gateway.deferred import AsyncRequest, Deferrer
from aimesh.jobs import (
    DeadLetter,
    Handler,
    Job,
    JobClient,
    JobContext,
    JobSpec,
    Worker,
    consumer_name,
    dead_letter_subject,
    get_handler,
    states,
    verify_signature,
)
from aimesh.jobs.events import change_between

T = TypeVar("T")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WAIT_S = 30.0
FAST = JobsSettings(ack_wait_s=2, backoff_s=0.05, progress_interval_s=0.1, drain_timeout_s=5)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def bus_url(tmp_path: Path) -> Iterator[str]:
    """A fresh bundled nats-server per test: no job, consumer or record leaks between tests."""
    with EmbeddedNats(tmp_path / "nats", start_timeout=30) as server:
        yield server.url


@contextlib.asynccontextmanager
async def jobs_on(url: str, settings: JobsSettings = FAST) -> AsyncIterator[tuple[Bus, JobClient]]:
    async with await connect(url, timeout=10, name="test") as bus:
        client = await JobClient.open(bus, settings)
        try:
            yield bus, client
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def worker_running(
    bus: Bus, kind: str, handler: Handler, settings: JobsSettings = FAST, concurrency: int = 1
) -> AsyncIterator[Worker]:
    worker = Worker(bus, kind, handler, settings=settings, concurrency=concurrency)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), WAIT_S)
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT_S)


async def until(client: JobClient, job_id: str, check: Any, timeout: float = WAIT_S) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await client.get(job_id)
        if check(job):
            return job
        assert time.monotonic() < deadline, f"job never got there: {job}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def changes_recorded(bus: Bus) -> AsyncIterator[dict[str, list[str]]]:
    """Every change of every job record written inside the block, by job id, in order.

    A job's events are its record's revisions: this watches them all live (the bucket
    keeps only a few past revisions), and on leaving waits until they stop coming.
    """
    kv = await bus.js.key_value(JOBS_BUCKET)
    watcher = await kv.watch("job.*")
    changes: dict[str, list[str]] = {}
    last: dict[str, Job] = {}
    quiet = asyncio.Event()

    async def follow() -> None:
        while True:
            try:
                entry = await watcher.updates(timeout=0.5)
            except nats.errors.TimeoutError:
                quiet.set()
                continue
            if entry is None or not entry.value:
                continue
            quiet.clear()
            job = msgspec.json.decode(entry.value, type=Job)
            changes.setdefault(job.id, []).append(change_between(last.get(job.id), job))
            last[job.id] = job

    following = asyncio.create_task(follow())
    try:
        yield changes
        quiet.clear()
        await asyncio.wait_for(quiet.wait(), WAIT_S)
    finally:
        following.cancel()
        await watcher.stop()


async def stream_messages(bus: Bus, stream: str) -> int:
    info = await bus.js.stream_info(stream)
    count: int = info.state.messages
    return count


# -- in-process workers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim_after_s", "steps"),
    [
        # Ended before it was to be claimed: its record is written once, to the outcome.
        (FAST.claim_after_s, ["queued", "succeeded"]),
        # Claimed before it starts.
        (0.0, ["queued", "running", "succeeded"]),
    ],
)
def test_noop_job_runs_to_succeeded_with_its_result(
    bus_url: str, claim_after_s: float, steps: list[str]
) -> None:
    settings = FAST.model_copy(update={"claim_after_s": claim_after_s})

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            async with (
                worker_running(bus, "noop", get_handler("noop"), settings),
                changes_recorded(bus) as changes,
            ):
                job = await client.submit(JobSpec(kind="noop", payload={"echo": {"a": 1}}))
                assert job.state == "queued"
                done = await client.wait(job.id, timeout=WAIT_S)
            assert (done.state, done.result, done.attempts, done.progress) == (
                "succeeded",
                {"a": 1},
                1,
                1.0,
            )
            assert done.started is not None and done.finished is not None
            assert await stream_messages(bus, JOBS_STREAM) == 0  # acknowledged, removed
            assert changes[job.id] == steps
            assert done.worker is not None
            assert [j.id for j in await client.list(kind="noop", state="succeeded")] == [job.id]
            assert await client.list(kind="sleep") == []

    run(main())


def test_a_succeeded_job_keeps_its_last_progress_message(bus_url: str) -> None:
    async def chatty(ctx: JobContext) -> object:
        ctx.progress(0.5, "half way")
        ctx.progress(1.0, "registered the thing")  # then it returns at once
        return None

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client), worker_running(bus, "chatty", chatty):
            job = await client.submit(JobSpec(kind="chatty"))
            done = await client.wait(job.id, timeout=WAIT_S)
        assert (done.progress, done.progress_message) == (1.0, "registered the thing")

    run(main())


def test_poison_job_fails_after_its_attempts_and_lands_in_the_dead_letter_stream(
    bus_url: str,
) -> None:
    calls: list[int] = []

    async def poison(ctx: JobContext) -> object:
        calls.append(ctx.attempt)
        raise RuntimeError("cannot digest this")

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "poison", poison), changes_recorded(bus) as changes:
                job = await client.submit(JobSpec(kind="poison", max_attempts=3))
                with pytest.raises(JobFailed) as failed:
                    await client.wait(job.id, timeout=WAIT_S)
            assert failed.value.error_code == "handler_error"
            record = await client.get(job.id)
            assert (record.state, record.attempts) == ("failed", 3)
            assert record.error is not None and "cannot digest this" in record.error.message
            assert calls == [1, 2, 3]
            message = await bus.js.get_last_msg(DLQ_STREAM, dead_letter_subject("poison"))
            letter = msgspec.json.decode(message.data, type=DeadLetter)
            assert letter.job.id == job.id and letter.attempts == 3
            assert letter.reason.code == "handler_error"
            assert "cannot digest this" in letter.reason.message
            assert await stream_messages(bus, JOBS_STREAM) == 0
            assert changes[job.id] == [
                "queued",
                "running",
                "retrying",
                "running",
                "retrying",
                "running",
                "failed",
            ]

    run(main())


def test_a_rejected_job_fails_at_once_and_a_flaky_one_succeeds_on_retry(bus_url: str) -> None:
    async def flaky(ctx: JobContext) -> object:
        if ctx.attempt == 1:
            raise ConnectionError("transient")
        return "second time lucky"

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "sleep", get_handler("sleep")):
                bad = await client.submit(JobSpec(kind="sleep", payload={"seconds": "soon"}))
                with pytest.raises(JobFailed) as failed:
                    await client.wait(bad.id, timeout=WAIT_S)
                assert failed.value.error_code == "job_rejected"
                assert (await client.get(bad.id)).attempts == 1
            async with worker_running(bus, "flaky", flaky):
                job = await client.submit(JobSpec(kind="flaky"))
                done = await client.wait(job.id, timeout=WAIT_S)
            assert (done.attempts, done.result, done.error) == (2, "second time lucky", None)

    run(main())


def test_a_failed_job_is_retried_as_a_new_job_that_names_it(bus_url: str) -> None:
    broken = True

    async def flaky(ctx: JobContext) -> object:
        if broken:
            raise RuntimeError("the model store is down")
        return {"ok": ctx.payload["n"]}

    async def main() -> None:
        nonlocal broken
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "flaky", flaky):
                spec = JobSpec(kind="flaky", payload={"n": 7}, max_attempts=1, timeout_s=30)
                failed = await client.submit(spec)
                with pytest.raises(JobFailed):
                    await client.wait(failed.id, timeout=WAIT_S)
                with pytest.raises(JobNotRetryable):  # a queued job has not ended
                    await client.retry((await client.submit(JobSpec(kind="other"))).id)
                broken = False
                again = await client.retry(failed.id)
                assert (await client.retry(failed.id)).id == again.id  # asked twice: one retry
                done = await client.wait(again.id, timeout=WAIT_S)
            assert again.id != failed.id and done.retry_of == failed.id
            assert done.idempotency_key == f"retry:{failed.id}"
            assert (done.state, done.result, done.payload) == ("succeeded", {"ok": 7}, {"n": 7})
            assert (done.max_attempts, done.timeout_s) == (1, 30)
            assert (await client.get(failed.id)).state == "failed"  # the old one is as it was
            with pytest.raises(JobNotRetryable):  # succeeded
                await client.retry(again.id)
            with pytest.raises(JobNotFound):
                await client.retry("f" * 32)

    run(main())


def test_an_attempt_over_its_timeout_is_stopped(bus_url: str) -> None:
    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "sleep", get_handler("sleep")):
                spec = JobSpec(kind="sleep", payload={"seconds": 30}, timeout_s=0.3, max_attempts=1)
                job = await client.submit(spec)
                with pytest.raises(JobFailed) as failed:
                    await client.wait(job.id, timeout=WAIT_S)
            assert failed.value.error_code == "deadline_exceeded"

    run(main())


def test_a_thread_past_its_kinds_default_timeout_is_fenced_when_it_finishes_later(
    bus_url: str,
) -> None:
    release, finished = threading.Event(), threading.Event()
    committed: list[str] = []
    refused: list[str] = []

    def stubborn(ctx: JobContext) -> str:
        try:
            release.wait(WAIT_S)  # a thread the worker cannot stop
            try:
                with ctx.commit("writing the result"):
                    committed.append("written")
            except DeadlineExceeded as exc:
                refused.append(exc.message)
                raise
            return "done"
        finally:
            finished.set()

    # No timeout_s on the job: its kind's default applies.
    settings = FAST.model_copy(update={"timeouts_s": {"stubborn": 0.3}})

    async def main() -> None:
        async with jobs_on(bus_url, settings) as (bus, client):
            async with worker_running(bus, "stubborn", stubborn, settings) as worker:
                job = await client.submit(JobSpec(kind="stubborn", max_attempts=1))
                with pytest.raises(JobFailed) as failed:
                    await client.wait(job.id, timeout=WAIT_S)
                assert failed.value.error_code == "deadline_exceeded"
                release.set()
                assert await asyncio.to_thread(finished.wait, WAIT_S)
                assert worker.stats.fenced == 1
            final = await client.get(job.id)
            assert (final.state, final.result) == ("failed", None)

    run(main())
    assert committed == []
    assert refused == ["attempt 1 ran past its timeout of 0.3s: writing the result not done"]


def test_a_commit_under_way_at_the_deadline_ends_and_the_job_ends_as_its_handler_says(
    bus_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    in_commit, release = threading.Event(), threading.Event()

    def committing(ctx: JobContext) -> str:
        with ctx.commit("a slow write"):
            in_commit.set()
            release.wait(WAIT_S)
        return "written"

    async def main() -> Job:
        async with (
            jobs_on(bus_url) as (bus, client),
            worker_running(bus, "committing", committing),
        ):
            job = await client.submit(JobSpec(kind="committing", timeout_s=0.3))
            assert await asyncio.to_thread(in_commit.wait, WAIT_S)
            deadline = time.monotonic() + WAIT_S
            while "letting it end" not in caplog.text:  # the worker reached the deadline
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.02)
            release.set()
            return await client.wait(job.id, timeout=WAIT_S)

    with caplog.at_level(logging.INFO, logger="aimesh.jobs.worker"):
        done = run(main())
    assert (done.state, done.result) == ("succeeded", "written")


def test_duplicate_submissions_with_one_idempotency_key_make_one_job(bus_url: str) -> None:
    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            spec = JobSpec(kind="noop", idempotency_key="order-42/charge")
            jobs = await asyncio.gather(*(client.submit(spec) for _ in range(8)))
            assert len({job.id for job in jobs}) == 1
            assert await stream_messages(bus, JOBS_STREAM) == 1
            assert len(await client.list()) == 1
            other = await client.submit(JobSpec(kind="noop", idempotency_key="order-43/charge"))
            assert other.id != jobs[0].id
            async with worker_running(bus, "noop", get_handler("noop")) as worker:
                await client.wait(jobs[0].id, timeout=WAIT_S)
                await client.wait(other.id, timeout=WAIT_S)
            assert worker.stats.succeeded == 2
            again = await client.submit(spec)  # long after: still the same job, not rerun
            assert (again.id, again.state) == (jobs[0].id, "succeeded")
            # The key names its first request: another payload under it is a conflict.
            changed = JobSpec(kind="noop", payload={"n": 2}, idempotency_key="order-42/charge")
            with pytest.raises(IdempotencyConflict) as conflict:
                await client.submit(changed)
            assert (conflict.value.code, conflict.value.job_id) == (
                "idempotency_conflict",
                jobs[0].id,
            )
            assert await stream_messages(bus, JOBS_STREAM) == 0
            assert len(await client.list()) == 2

    run(main())


def test_cancel_a_queued_job_and_a_running_one(bus_url: str) -> None:
    seen: dict[str, bool] = {}
    started: list[str] = []

    async def slow(ctx: JobContext) -> object:
        seen["ran"] = True
        started.append(ctx.job.id)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        return None

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            queued = await client.submit(JobSpec(kind="slow"))
            cancelled = await client.cancel(queued.id)
            assert (cancelled.state, cancelled.cancel_requested) == ("cancelled", True)
            assert await client.cancel(queued.id) == cancelled  # again: nothing changes
            async with worker_running(bus, "slow", slow) as worker:
                # The cancelled job's message is skipped, never run.
                running = await client.submit(JobSpec(kind="slow"))
                await until(client, running.id, lambda j: j.state == "running")
                asked = await client.cancel(running.id)
                assert (asked.state, asked.cancel_requested) == ("running", True)
                with pytest.raises(JobFailed) as failed:
                    await client.wait(running.id, timeout=10)
                assert failed.value.state == "cancelled"
            assert worker.stats.skipped == 1 and worker.stats.cancelled == 1
            assert seen == {"ran": True, "cancelled": True}
            assert started == [running.id]  # the job cancelled before the worker came, never
            assert (await client.get(queued.id)).attempts == 0
            assert await stream_messages(bus, JOBS_STREAM) == 0
            with pytest.raises(JobFinished):
                done = await client.submit(JobSpec(kind="noop"))
                async with worker_running(bus, "noop", get_handler("noop")):
                    await client.wait(done.id, timeout=WAIT_S)
                await client.cancel(done.id)
            with pytest.raises(JobNotFound):
                await client.cancel("f" * 32)

    run(main())


async def until_running(worker: Worker) -> None:
    """Wait until ``worker`` runs a job."""
    deadline = time.monotonic() + WAIT_S
    while not worker.running:
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.01)


async def nothing_recorded_but_cancelled(client: JobClient, job_id: str) -> None:
    """Check that the job ended cancelled, with no attempt, worker or result on record."""
    record = await client.get(job_id)
    assert (record.state, record.attempts, record.worker, record.result) == (
        "cancelled",
        0,
        None,
        None,
    )


async def drained(bus: Bus) -> None:
    """Wait until every job message is acknowledged."""
    deadline = time.monotonic() + WAIT_S
    while await stream_messages(bus, JOBS_STREAM):
        assert time.monotonic() < deadline, "job messages left in the queue"
        await asyncio.sleep(0.05)


def test_a_job_cancelled_while_queued_never_runs_though_its_message_is_fresh(
    bus_url: str,
) -> None:
    started: list[str] = []
    gate = asyncio.Event()

    async def gated(ctx: JobContext) -> object:
        started.append(ctx.job.id)
        await gate.wait()
        return None

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "gated", gated, concurrency=1) as worker:
                first = await client.submit(JobSpec(kind="gated"))
                await until(client, first.id, lambda j: j.state == "running")
                # The worker is busy: the second job waits in the queue, is cancelled there,
                # and the worker hears of it before its message comes.
                second = await client.submit(JobSpec(kind="gated"))
                assert (await client.cancel(second.id)).state == "cancelled"
                gate.set()
                assert (await client.wait(first.id, timeout=WAIT_S)).state == "succeeded"
                await drained(bus)
            assert started == [first.id]
            assert worker.stats.skipped == 1
            await nothing_recorded_but_cancelled(client, second.id)

    run(main())


def test_a_job_cancelled_while_it_runs_unclaimed_stops_and_ends_cancelled(bus_url: str) -> None:
    stopped = asyncio.Event()

    async def slow(ctx: JobContext) -> object:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return None

    # Claimed only after 5 s: the cancel comes while the record still says queued.
    late = FAST.model_copy(update={"ack_wait_s": 30.0, "claim_after_s": 5.0})

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "slow", slow, late) as worker:
                job = await client.submit(JobSpec(kind="slow"))
                await until_running(worker)
                assert (await client.get(job.id)).state == "queued"  # running, not claimed
                assert (await client.cancel(job.id)).state == "cancelled"
                await asyncio.wait_for(stopped.wait(), WAIT_S)
                await drained(bus)
            await nothing_recorded_but_cancelled(client, job.id)

    run(main())


def test_a_job_cancelled_unheard_while_it_runs_early_is_stopped_at_its_claim(
    bus_url: str,
) -> None:
    saw: list[bool] = []

    def patient(ctx: JobContext) -> object:  # a plain function: it runs in a thread
        deadline = time.monotonic() + WAIT_S
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        saw.append(ctx.cancelled)
        return None

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            settings = FAST.model_copy(update={"claim_after_s": 0.3})
            async with worker_running(bus, "patient", patient, settings) as worker:
                job = await client.submit(JobSpec(kind="patient"))
                await until_running(worker)
                # Cancelled as by a client that died before it told the workers: the worker
                # learns it when its claim, written against the queued record, fails.
                await client.store.change(job.id, lambda j: states.request_cancel(j, T0))
                await drained(bus)
                deadline = time.monotonic() + WAIT_S
                while not saw:
                    assert time.monotonic() < deadline, "the handler was never told"
                    await asyncio.sleep(0.01)
            assert saw == [True]
            await nothing_recorded_but_cancelled(client, job.id)

    run(main())


def test_a_worker_runs_at_most_its_concurrency_of_handlers_and_every_job_once(
    bus_url: str,
) -> None:
    running: list[str] = []
    peak = 0
    ran: list[str] = []

    async def counted(ctx: JobContext) -> object:
        nonlocal peak
        running.append(ctx.job.id)
        peak = max(peak, len(running))
        try:
            await asyncio.sleep(0.01)
        finally:
            running.remove(ctx.job.id)
        ran.append(ctx.job.id)
        return None

    async def main() -> None:
        async with jobs_on(bus_url) as (bus, client):
            jobs = [await client.submit(JobSpec(kind="counted")) for _ in range(40)]
            async with worker_running(bus, "counted", counted, concurrency=3) as worker:
                for job in jobs:
                    await client.wait(job.id, timeout=WAIT_S)
            assert worker.stats.succeeded == 40
            assert sorted(ran) == sorted(job.id for job in jobs)
            assert peak == 3
            assert await stream_messages(bus, JOBS_STREAM) == 0

    run(main())


def test_a_draining_worker_hands_back_what_it_cannot_finish(bus_url: str) -> None:
    async def stuck(ctx: JobContext) -> object:
        await asyncio.sleep(60)
        return None

    async def quick(ctx: JobContext) -> object:
        return ctx.attempt

    async def main() -> None:
        draining = FAST.model_copy(update={"drain_timeout_s": 0.2})
        async with jobs_on(bus_url) as (bus, client):
            async with worker_running(bus, "handoff", stuck, draining) as first:
                job = await client.submit(JobSpec(kind="handoff"))
                await until(client, job.id, lambda j: j.state == "running")
            assert first.stats.released == 1
            back = await client.get(job.id)
            assert (back.state, back.attempts) == ("queued", 0)
            async with worker_running(bus, "handoff", quick):
                done = await client.wait(job.id, timeout=WAIT_S)
            assert (done.state, done.attempts, done.result) == ("succeeded", 1, 1)

    run(main())


# -- webhooks -------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[bytes, dict[str, str]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((body, dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    """A tiny local HTTP server that records what is posted to it."""
    _Receiver.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.calls
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_of_a_finished_job_carries_a_valid_signature(
    bus_url: str, receiver: tuple[str, list[tuple[bytes, dict[str, str]]]]
) -> None:
    url, calls = receiver
    signed = JobsSettings.model_validate(
        {**FAST.model_dump(), "webhook_secret": "s3cret", "webhook_allow": ["127.0.0.1"]}
    )

    async def main() -> None:
        async with jobs_on(bus_url, signed) as (bus, client):
            async with worker_running(bus, "noop", get_handler("noop"), signed):
                job = await client.submit(JobSpec(kind="noop", webhook_url=url))
                await client.wait(job.id, timeout=WAIT_S)
                deadline = time.monotonic() + WAIT_S
                while not calls and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            queued = await client.submit(JobSpec(kind="noop", webhook_url=url + "?cancelled"))
            await client.cancel(queued.id)
        # The client's close waited for its call.
        assert len(calls) == 2
        for body, headers in calls:
            assert verify_signature(body, headers["X-Aimesh-Signature"], "s3cret")
            assert not verify_signature(body, headers["X-Aimesh-Signature"], "other")
        states = {msgspec.json.decode(body, type=Job).state for body, _ in calls}
        assert states == {"succeeded", "cancelled"}
        assert msgspec.json.decode(calls[0][0], type=Job).id == job.id

    run(main())


# -- processes: the CLI, workers killed, the REST service ----------------------------------


def _env(url: str, home: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    return {
        **inherited,
        "AIMESH_HOME": str(home),
        "AIMESH_BUS__URL": url,
        "AIMESH_JOBS__ACK_WAIT_S": "2",
        "AIMESH_JOBS__BACKOFF_S": "0.05",
        "AIMESH_JOBS__PROGRESS_INTERVAL_S": "0.1",
        "COLUMNS": "200",
    }


def _worker(env: dict[str, str], log: Path, kind: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aimesh", "worker", kind],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def test_worker_killed_mid_job_is_redelivered_and_completes_once(
    bus_url: str, tmp_path: Path
) -> None:
    # ack_wait of a minute: the job comes back sooner because its worker's discovery entry
    # is gone (the other worker hands it back), well within the wait below.
    env = _env(bus_url, tmp_path / "home") | {"AIMESH_JOBS__ACK_WAIT_S": "60"}
    first = _worker(env, tmp_path / "first.log", "sleep")
    second: subprocess.Popen[bytes] | None = None
    try:

        async def main() -> None:
            nonlocal second
            async with jobs_on(bus_url) as (bus, client):
                async with changes_recorded(bus) as changes:
                    job = await client.submit(JobSpec(kind="sleep", payload={"seconds": 2.5}))
                    running = await until(client, job.id, lambda j: j.state == "running")
                    second = _worker(env, tmp_path / "second.log", "sleep")
                    first.send_signal(signal.SIGKILL)
                    first.wait(timeout=10)
                    done = await client.wait(job.id, timeout=WAIT_S)  # < ack_wait
                    assert (done.state, done.attempts) == ("succeeded", 2)
                    assert done.worker != running.worker
                # The killed attempt shows, ended worker_lost; the second one succeeded once.
                log = [(a.number, a.worker, a.outcome) for a in done.attempt_log]
                assert log == [
                    (1, running.worker, "worker_lost"),
                    (2, done.worker, "succeeded"),
                ]
                assert done.attempt_log[0].error is not None
                assert done.attempt_log[0].error.code == "worker_lost"
                steps = [change for change in changes[job.id] if change != "progress"]
                assert steps == ["queued", "running", "retrying", "running", "succeeded"]
                assert "progress" in changes[job.id]
                assert await stream_messages(bus, JOBS_STREAM) == 0
                assert await stream_messages(bus, DLQ_STREAM) == 0

        run(main())
        assert second is not None
        second.send_signal(signal.SIGTERM)  # drains (nothing running) and exits cleanly
        assert second.wait(timeout=20) == 0
        assert "1 succeeded" in (tmp_path / "second.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_only_worker_of_a_kind_killed_mid_job_and_restarted_takes_it_up_at_once(
    bus_url: str, tmp_path: Path
) -> None:
    # ack_wait of ten minutes, every wait below far shorter: the job can only come back
    # because the new worker, started once the dead one's entry is gone (so it hears no
    # entry go), sweeps for the running jobs of its kind whose worker has no entry.
    ack_wait_s = 600.0
    assert ack_wait_s > 2 * 3 * WAIT_S  # every wait below, together, twice over
    env = _env(bus_url, tmp_path / "home") | {"AIMESH_JOBS__ACK_WAIT_S": str(ack_wait_s)}
    first = _worker(env, tmp_path / "first.log", "sleep")
    second: subprocess.Popen[bytes] | None = None
    try:

        async def main() -> None:
            nonlocal second
            async with jobs_on(bus_url) as (bus, client):
                job = await client.submit(JobSpec(kind="sleep", payload={"seconds": 3}))
                running = await until(client, job.id, lambda j: j.state == "running")
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                discovery = await bus.js.key_value(DISCOVERY_BUCKET)
                deadline = time.monotonic() + WAIT_S
                while True:  # the dead worker's entry expires
                    try:
                        await discovery.get(f"worker.sleep.{running.worker}")
                    except nats.js.errors.KeyNotFoundError:
                        break
                    assert time.monotonic() < deadline, "the dead worker's entry stayed"
                    await asyncio.sleep(0.1)
                second = _worker(env, tmp_path / "second.log", "sleep")
                done = await client.wait(job.id, timeout=2 * WAIT_S)
                assert (done.state, done.attempts) == ("succeeded", 2)
                log = [(a.number, a.worker, a.outcome) for a in done.attempt_log]
                assert log == [(1, running.worker, "worker_lost"), (2, done.worker, "succeeded")]
                assert done.worker not in (None, running.worker)
                await drained(bus)

        run(main())
        assert "handed back for its next attempt" in (tmp_path / "second.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_worker_lost_before_it_claims_its_job_shows_as_a_lost_attempt(
    bus_url: str, tmp_path: Path
) -> None:
    # ack_wait 6 s: claimed 2 s after it starts, and redelivered 6 s after the loss.
    env = _env(bus_url, tmp_path / "home") | {"AIMESH_JOBS__ACK_WAIT_S": "6"}
    first = _worker(env, tmp_path / "first.log", "sleep")
    second: subprocess.Popen[bytes] | None = None
    try:

        async def main() -> None:
            nonlocal second
            async with jobs_on(bus_url) as (bus, client):
                consumer = consumer_name("sleep")
                deadline = time.monotonic() + WAIT_S
                while True:  # the first worker listens
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await bus.js.consumer_info(JOBS_STREAM, consumer)
                        break
                    assert time.monotonic() < deadline, "the worker never started"
                    await asyncio.sleep(0.05)
                async with changes_recorded(bus) as changes:
                    job = await client.submit(JobSpec(kind="sleep", payload={"seconds": 0.5}))
                    while not (await bus.js.consumer_info(JOBS_STREAM, consumer)).num_ack_pending:
                        await asyncio.sleep(0.01)
                    first.send_signal(signal.SIGKILL)  # it has the job, and has not claimed it
                    first.wait(timeout=10)
                    assert (await client.get(job.id)).state == "queued"
                    second = _worker(env, tmp_path / "second.log", "sleep")
                    done = await client.wait(job.id, timeout=WAIT_S)
                # Nothing was written of the first delivery: its redelivery enters it, in the
                # same write as its own claim.
                assert (done.state, done.attempts) == ("succeeded", 2)
                log = [(a.number, a.worker, a.outcome) for a in done.attempt_log]
                assert log == [(1, None, "worker_lost"), (2, done.worker, "succeeded")]
                steps = [change for change in changes[job.id] if change != "progress"]
                assert steps == ["queued", "running", "succeeded"]
                await drained(bus)

        run(main())
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_worker_that_lost_its_bus_still_stops_cleanly(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats", start_timeout=30) as server:
        env = _env(server.url, tmp_path / "home")
        log = tmp_path / "worker.log"
        worker = _worker(env, log, "sleep")
        try:
            deadline = time.monotonic() + WAIT_S
            while "runs jobs of kind sleep" not in log.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        except BaseException:
            worker.kill()
            worker.wait()
            raise
    try:  # the bus is gone now, and the worker tries to reconnect
        time.sleep(2)
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=WAIT_S) == 0, log.read_text()
        said = log.read_text()
        assert "worker stopped" in said and "Traceback" not in said
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_cli_submits_lists_shows_and_cancels_jobs(bus_url: str, tmp_path: Path) -> None:
    env = _env(bus_url, tmp_path / "home")
    job_id = run_aimesh(
        env, "jobs", "submit", "sleep", "--payload", '{"seconds": 1}', "--key", "k1"
    )
    job_id_text = job_id.stdout.strip()
    assert len(job_id_text) == 32
    listed = run_aimesh(env, "jobs", "list", "--kind", "sleep")
    assert job_id_text in listed.stdout and "queued" in listed.stdout
    shown = run_aimesh(env, "jobs", "show", job_id_text)
    assert "queued" in shown.stdout and "0 of 3" in shown.stdout
    cancelled = run_aimesh(env, "jobs", "cancel", job_id_text)
    assert "cancelled" in cancelled.stdout
    as_json = json.loads(run_aimesh(env, "jobs", "show", job_id_text, "--json").stdout)
    assert as_json["state"] == "cancelled"
    watched = run_aimesh(env, "jobs", "watch", job_id_text, ok=False)  # it has ended
    assert watched.returncode == 1 and "cancelled" in watched.stdout
    retried = run_aimesh(env, "jobs", "retry", job_id_text).stdout.strip()
    assert len(retried) == 32 and retried != job_id_text
    shown_retry = run_aimesh(env, "jobs", "show", retried).stdout.splitlines()
    assert [job_id_text] == [line.split()[-1] for line in shown_retry if "retry of" in line]
    # What users and handlers write is shown as written, never read as markup.
    odd = run_aimesh(env, "jobs", "submit", "sleep", "--payload", '{"note": "[/data] [red]"}')
    assert '"[/data] [red]"' in run_aimesh(env, "jobs", "show", odd.stdout.strip()).stdout
    refused = run_aimesh(env, "jobs", "retry", retried, ok=False)  # queued: not ended
    assert refused.returncode == 1 and "job_not_retryable" in refused.stderr
    missing = run_aimesh(env, "jobs", "show", "0" * 32, ok=False)
    assert missing.returncode == 1 and "job_not_found" in missing.stderr
    bad = run_aimesh(env, "jobs", "submit", "Bad.Kind", ok=False)
    assert bad.returncode == 1 and "invalid_name" in bad.stderr


def test_cli_watch_follows_a_job_to_its_end(bus_url: str, tmp_path: Path) -> None:
    env = _env(bus_url, tmp_path / "home")
    submitted = run_aimesh(env, "jobs", "submit", "sleep", "--payload", '{"seconds": 1.5}')
    job_id = submitted.stdout.strip()
    worker = _worker(env, tmp_path / "worker.log", "sleep")
    try:
        watched = run_aimesh(env, "jobs", "watch", job_id, "--json")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    changes = [event["change"] for event in events]
    # First the state the job is in when the watch begins, last its end.
    assert changes[0] in ("queued", "running") and changes[-1] == "succeeded", changes
    assert "running" in changes and "progress" in changes  # claimed after claim_after_s
    assert [event["revision"] for event in events] == sorted({e["revision"] for e in events})


@contextlib.contextmanager
def jobs_service(bus_url: str, tmp_path: Path, **env: str) -> Iterator[str]:
    """``aimesh jobs serve`` on a free port (``env``: more variables), ready once /health
    answers; its URL. It must stop cleanly."""
    port = free_port()
    proc = start(
        ["jobs", "serve", "--port", str(port)],
        env=_env(bus_url, tmp_path / "home") | env,
        log=tmp_path / "jobs-service.log",
        http=f"http://127.0.0.1:{port}",
        ready_path="/health",
    )
    try:
        yield proc.http
    finally:
        # uvicorn ends a graceful shutdown by re-raising the signal.
        code = proc.stop()
        assert code in (0, -signal.SIGTERM), (tmp_path / "jobs-service.log").read_text()


@pytest.fixture
def service(bus_url: str, tmp_path: Path) -> Iterator[str]:
    """``aimesh jobs serve`` on a free port, ready once /health answers."""
    with jobs_service(bus_url, tmp_path) as url:
        yield url


async def _next_event(lines: AsyncIterator[str]) -> tuple[str, dict[str, Any]] | None:
    name, data = "", ""
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and name:
            return name, json.loads(data)
    return None


WEBHOOKS_REFUSED = [
    "http://127.0.0.1:8200/api/lake/datasets/tx/compact",
    "http://[::1]/",
    "http://169.254.169.254/latest",
    "http://localhost/",
    "http://127.1/",
    "http://0x7f.1/",
    "http://2130706433/",
    "file:///etc/passwd",
    "ftp://x",
    "http://user:pw@example.com/",
]


def test_rest_api_submits_shows_lists_cancels_and_streams_events(
    bus_url: str, service: str
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(base_url=service, timeout=WAIT_S) as http:
            created = await http.post(
                "/api/jobs", json={"kind": "sleep", "payload": {"seconds": 0.5}}
            )
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            assert created.headers["location"] == f"/api/jobs/{job_id}"
            assert created.json()["state"] == "queued"
            changes: list[str] = []
            async with http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                first = await _next_event(lines)
                assert first is not None and first[0] == "queued"
                async with (
                    jobs_on(bus_url) as (bus, _client),
                    worker_running(bus, "sleep", get_handler("sleep")),
                ):
                    while (event := await _next_event(lines)) is not None:
                        changes.append(event[0])
            assert changes[0] == "running" and changes[-1] == "succeeded"
            assert set(changes[1:-1]) <= {"progress"} and "progress" in changes
            shown = (await http.get(f"/api/jobs/{job_id}")).json()
            assert (shown["state"], shown["result"]) == ("succeeded", {"slept_s": 0.5})
            listed = (await http.get("/api/jobs", params={"state": "succeeded"})).json()
            assert [j["id"] for j in listed] == [job_id]
            # A finished job's stream is its final state, then the end.
            async with http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
                assert await _next_event(stream.aiter_lines()) is not None

            refused = await http.post(f"/api/jobs/{job_id}/cancel")
            assert (refused.status_code, refused.json()["code"]) == (409, "job_finished")
            queued = (await http.post("/api/jobs", json={"kind": "sleep"})).json()
            not_ended = await http.post(f"/api/jobs/{queued['id']}/retry")
            assert (not_ended.status_code, not_ended.json()["code"]) == (409, "job_not_retryable")
            cancelled = await http.post(f"/api/jobs/{queued['id']}/cancel")
            assert cancelled.json()["state"] == "cancelled"
            again = await http.post(f"/api/jobs/{queued['id']}/retry")
            assert again.status_code == 202, again.text
            assert again.headers["location"] == f"/api/jobs/{again.json()['id']}"
            assert (again.json()["state"], again.json()["retry_of"]) == ("queued", queued["id"])
            succeeded = await http.post(f"/api/jobs/{job_id}/retry")
            assert (succeeded.status_code, succeeded.json()["code"]) == (409, "job_not_retryable")
            unknown = await http.post(f"/api/jobs/{'0' * 32}/retry")
            assert (unknown.status_code, unknown.json()["code"]) == (404, "job_not_found")

            missing = await http.get(f"/api/jobs/{'0' * 32}")
            assert (missing.status_code, missing.json()["code"]) == (404, "job_not_found")
            no_events = await http.get(f"/api/jobs/{'0' * 32}/events")
            assert no_events.status_code == 404
            bad = await http.post("/api/jobs", json={"kind": "sleep", "colour": "red"})
            assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")
            before = len((await http.get("/api/jobs")).json())
            for hook in WEBHOOKS_REFUSED:
                refused = await http.post("/api/jobs", json={"kind": "noop", "webhook_url": hook})
                assert (refused.status_code, refused.json()["code"]) == (400, "url_refused"), hook
                assert "refused" in refused.json()["error"]
            assert len((await http.get("/api/jobs")).json()) == before  # nothing was queued
            huge = {"kind": "noop", "payload": {"blob": "x" * 400_000}}
            too_large = await http.post("/api/jobs", json=huge)
            assert (too_large.status_code, too_large.json()["code"]) == (413, "request_too_large")
            not_an_id = await http.get("/api/jobs/nope")
            assert not_an_id.status_code == 400
            schemas = (await http.get("/openapi.json")).json()["components"]["schemas"]
            assert {"JobSpec", "Job", "JobEvent"} <= set(schemas)

    run(main())


def test_event_streams_hold_at_most_half_the_services_slots(bus_url: str, tmp_path: Path) -> None:
    """With room for two requests, one stream fills the streams' half: another is refused
    at once (not left waiting), ordinary requests still pass, and a closed stream frees it."""

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            job = (await http.post("/api/jobs", json={"kind": "sleep"})).json()  # no worker
            events = f"/api/jobs/{job['id']}/events"
            async with http.stream("GET", events) as first:
                assert first.status_code == 200
                queued = await _next_event(first.aiter_lines())
                assert queued is not None and queued[0] == "queued"
                second = await http.get(events)
                assert (second.status_code, second.json()["code"]) == (503, "overloaded")
                assert int(second.headers["retry-after"]) >= 1
                shown = await http.get(f"/api/jobs/{job['id']}")
                assert shown.status_code == 200, shown.text
                assert (await http.get("/health")).status_code == 200
            deadline = time.monotonic() + WAIT_S
            while True:  # the server hears the stream's client go, then frees its slot
                async with http.stream("GET", events) as again:
                    if again.status_code == 200:
                        break
                    assert again.status_code == 503
                assert time.monotonic() < deadline, "the closed stream kept its slot"
                await asyncio.sleep(0.05)

    with jobs_service(bus_url, tmp_path, AIMESH_JOBS__MAX_CONCURRENCY="2") as url:
        run(main(url))


async def _until_health(http: httpx.AsyncClient, status: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while (await http.get("/health")).status_code != status:
        assert time.monotonic() < deadline, f"/health never answered {status}"
        await asyncio.sleep(0.05)


async def _until_connected(bus: Bus, connected: bool) -> None:
    deadline = time.monotonic() + WAIT_S
    while bus.connected != connected:
        assert time.monotonic() < deadline, f"the client never got connected={connected}"
        await asyncio.sleep(0.05)


async def _inputs_stored(bus: Bus) -> int:
    kv = await bus.js.key_value(JOB_DATA_BUCKET)
    try:
        return sum(key.startswith("in.") for key in await kv.keys())
    except nats.js.errors.NoKeysError:
        return 0


def test_a_submission_while_the_bus_is_down_is_refused_at_once_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """The jobs service and the gateway's async path (its :class:`Deferrer`) refuse with 503
    ``bus_unavailable`` and ``Retry-After`` while their bus is lost, before writing: no job
    record, no idempotency key bound, no stored input appears once the bus is back (a write
    tried during the outage would have waited out its timeout, then been sent on reconnect).
    After the bus is back, submissions succeed, the key as if never used."""
    server = EmbeddedNats(tmp_path / "nats", port=free_port(), start_timeout=30)
    url = server.start()
    outage = {"kind": "noop", "idempotency_key": "during-the-outage"}
    call = AsyncRequest(prefer=False, webhook_url=None, idempotency_key=None, query=b"")
    infer = {"model": "m", "version": None, "path": b"/v2/models/m/infer", "headers": []}

    async def main(base: str) -> None:
        async with (
            httpx.AsyncClient(base_url=base, timeout=WAIT_S) as http,
            await connect(url, timeout=10, name="test") as bus,
        ):
            deferrer = Deferrer(FAST)
            await deferrer.attach(bus)
            first = await http.post("/api/jobs", json={"kind": "noop"})
            assert first.status_code == 202, first.text

            await asyncio.to_thread(server.stop)
            await _until_health(http, 503)  # the service knows its bus is gone
            refused = await http.post("/api/jobs", json=outage)
            assert (refused.status_code, refused.json()["code"]) == (503, "bus_unavailable")
            assert int(refused.headers["retry-after"]) >= 1
            await _until_connected(bus, False)
            with pytest.raises(BusUnavailable) as deferred:
                await deferrer.submit(body=b"{}", options=call, **infer)
            assert deferred.value.retry_after_s is not None

            assert await asyncio.to_thread(server.start) == url  # its old port, its old data
            await _until_health(http, 200)
            await _until_connected(bus, True)
            listed = (await http.get("/api/jobs")).json()
            assert [job["id"] for job in listed] == [first.json()["id"]]
            assert await _inputs_stored(bus) == 0
            again = await http.post("/api/jobs", json=outage)
            assert again.status_code == 202, again.text
            assert again.json()["id"] != first.json()["id"] and again.json()["state"] == "queued"
            queued = await deferrer.submit(body=b"{}", options=call, **infer)
            assert queued.state == "queued" and await _inputs_stored(bus) == 1
            await deferrer.close()

    try:
        with jobs_service(url, tmp_path) as base:
            run(main(base))
    finally:
        server.stop()

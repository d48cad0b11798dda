"""Job kinds: a handler per kind, and the context a handler runs in.

Adding a kind is registering one handler::

    async def train(ctx: JobContext) -> dict[str, object]:
        ctx.progress(0.5, "half way")
        return {"version": 7}

    register_handler("train", train)

A handler is an ``async`` function of a :class:`JobContext`, or a plain function, which
then runs in a thread (CPU work stays off the event loop). What it returns is the job's
result (small JSON); it raises to fail the attempt: :class:`~aimesh.errors.InvalidRequest`
and its children (e.g. :class:`~aimesh.errors.JobRejected`) fail the job at once, anything
else is retried until the job's attempts are spent.

Every attempt has a deadline (the job's ``timeout_s``, else ``jobs.timeouts_s`` for its kind,
else ``jobs.default_timeout_s``). At the deadline the worker cancels the handler and
*fences* the attempt; a handler running in a thread cannot be stopped, so it must make each
lasting side effect (a registry push, an alias move, a result written) inside
:meth:`JobContext.commit`, which refuses (:class:`~aimesh.errors.DeadlineExceeded`) once the
attempt is fenced: nothing it does after its deadline takes effect. Progress reports after
it are dropped. A commit begun before the deadline is not interrupted, and the attempt then
ends as its handler says: make the commit the handler's last step.

The built-in kinds ``noop`` and ``sleep`` (see :mod:`aimesh.jobs.kinds`), ``training``
(see :mod:`aimesh.training`) and ``inference`` (see :mod:`aimesh.gateway.deferred`) are
imported when first asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeAlias

from aimesh.bus import Bus
from aimesh.errors import DeadlineExceeded, InvalidRequest, NotFound
from aimesh.jobs.types import Job, check_kind

__all__ = [
    "Handler",
    "JobContext",
    "get_handler",
    "handler_kinds",
    "load_handler",
    "register_handler",
]

Handler: TypeAlias = Callable[["JobContext"], Awaitable[object]] | Callable[["JobContext"], object]
"""What runs a job: ``async def handler(ctx) -> result``, or a plain function (in a thread)."""

_BUILTIN = {
    "noop": "aimesh.jobs.kinds:noop",
    "sleep": "aimesh.jobs.kinds:sleep",
    "training": "aimesh.training:train_job",
    "inference": "aimesh.gateway.deferred:inference_job",
}
_handlers: dict[str, Handler] = {}

log = logging.getLogger("aimesh.jobs.worker")


class JobContext:
    """What a handler knows of its job, and how it reports progress and sees a cancel."""

    def __init__(
        self,
        job: Job,
        attempt: int,
        bus: Bus | None = None,
        *,
        timeout_s: float | None = None,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self.job = job
        self.attempt = attempt
        """The attempt this is, from 1."""
        self.timeout_s = timeout_s
        """How long the attempt may run; ``None``: no deadline (a test's bare context)."""
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        """When the attempt's time is up (``time.monotonic()``), if it has a deadline."""
        self._bus = bus
        self._fence = threading.Lock()
        self._fenced: str | None = None
        self._commits = 0
        self._on_fenced = on_fenced
        self.result_ref: str | None = None
        """Set to a reference (a URI, a dataset version) when the result is too large to keep."""
        self._loop = asyncio.get_running_loop()
        self._cancelled = asyncio.Event()
        self._reported: tuple[float, str | None] | None = None
        self._wake = asyncio.Event()

    @property
    def bus(self) -> Bus:
        """The worker's bus connection (for handlers that read or write the bus)."""
        if self._bus is None:
            raise RuntimeError("this job runs without a bus (a test's bare JobContext)")
        return self._bus

    @property
    def payload(self) -> dict[str, Any]:
        """The job's payload."""
        return self.job.payload

    @property
    def cancelled(self) -> bool:
        """Whether the job was asked to stop: cancelled, or its worker shuts down.

        An async handler is also cancelled (``CancelledError``); one running in a thread
        cannot be, so it should poll this between steps and return early.
        """
        return self._cancelled.is_set()

    @property
    def expired(self) -> bool:
        """Whether the attempt is fenced: past its deadline, or stopped (cancelled, lost)."""
        return self._fenced is not None or (
            self.deadline is not None and time.monotonic() >= self.deadline
        )

    @contextlib.contextmanager
    def commit(self, what: str) -> Iterator[None]:
        """Do ``what`` (a lasting side effect) inside this block, unless the attempt is fenced.

        Raises :class:`~aimesh.errors.DeadlineExceeded` before the block runs when the
        attempt is past its deadline or was stopped; the worker logs it. Callable from a
        thread. While the block runs the fence waits: the worker lets a commit begun in
        time end, and the attempt ends as its handler says.
        """
        with self._fence:
            reason = self._fenced
            if reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
                reason = self._fenced = self._deadline_reason()
            if reason is None:
                self._commits += 1
        if reason is not None:
            if self._on_fenced is not None:
                self._on_fenced()
            log.warning(
                "attempt %d of job %s is fenced (%s): %s not done", self.attempt, self.job.id,
                reason, what,
            )  # fmt: skip
            raise DeadlineExceeded(f"attempt {self.attempt} {reason}: {what} not done")
        try:
            yield
        finally:
            with self._fence:
                self._commits -= 1

    def check(self, what: str) -> None:
        """Raise :class:`~aimesh.errors.DeadlineExceeded` (logged) if the attempt is fenced."""
        with self.commit(what):
            pass

    def _deadline_reason(self) -> str:
        return f"ran past its timeout of {self.timeout_s:g}s"

    def _trip(self, reason: str | None = None) -> bool:
        """Fence the attempt; whether a commit is under way (it is let finish)."""
        with self._fence:
            if self._fenced is None:
                self._fenced = reason or self._deadline_reason()
            return self._commits > 0

    async def wait_cancelled(self) -> None:
        """Return once the job is asked to stop."""
        await self._cancelled.wait()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0 to 1), with an optional message; callable from a thread.

        Reports are coalesced: the record keeps the latest one, written at most every
        ``jobs.progress_interval_s``. Dropped once the attempt is fenced.
        """
        if self.expired:
            return
        self._reported = (fraction, message)
        if self._on_loop():
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _take_progress(self) -> tuple[float, str | None] | None:
        reported, self._reported = self._reported, None
        return reported

    def _cancel(self, reason: str = "was stopped") -> None:
        self._trip(reason)
        self._cancelled.set()
        self._wake.set()


def register_handler(kind: str, handler: Handler, *, replace: bool = False) -> None:
    """Run jobs of ``kind`` with ``handler`` (in workers of this process)."""
    check_kind(kind)
    if kind in _handlers and _handlers[kind] is not handler and not replace:
        raise InvalidRequest(f"job kind {kind!r} already has a handler", kind=kind)
    _handlers[kind] = handler


def load_handler(path: str) -> Handler:
    """The handler at ``path``, ``package.module:function``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise InvalidRequest(f"handler {path!r} must be written module:function", path=path)
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise NotFound(f"cannot load handler {path}: {exc}", path=path) from exc
    if not callable(found):
        raise InvalidRequest(f"handler {path} is not callable", path=path)
    handler: Handler = found
    return handler


def get_handler(kind: str) -> Handler:
    """The handler of ``kind``: a registered one, else a built-in one."""
    check_kind(kind)
    if kind not in _handlers and kind in _BUILTIN:
        _handlers[kind] = load_handler(_BUILTIN[kind])
    try:
        return _handlers[kind]
    except KeyError:
        raise NotFound(
            f"no handler for job kind {kind!r}: register one (register_handler) or name one "
            "(aimesh worker KIND --handler module:function)",
            kind=kind,
        ) from None


def handler_kinds() -> list[str]:
    """Every kind with a handler in this process, built-in ones included."""
    return sorted({*_handlers, *_BUILTIN})


async def call_handler(handler: Handler, ctx: JobContext) -> object:
    """Run ``handler``: awaited when it is async, in a thread when it is not."""
    if inspect.iscoroutinefunction(handler):
        return await handler(ctx)
    result = await asyncio.to_thread(handler, ctx)
    if inspect.isawaitable(result):
        return await result
    return result

"""How many requests one service process has in flight, and the most it takes.

:class:`~aimesh.rest.GuardedApp` counts every request of a FastAPI service (registry,
lake, jobs) here, at the ASGI edge, from its first byte to its last (a streamed upload, a
slow client's body, a server-sent event stream: for as long as the app has it). A request
past ``limit`` is refused at once, 503 ``overloaded`` with ``Retry-After``
(:class:`~aimesh.errors.Overloaded`), before the app sees it. Two kinds of path are set
apart, by regular expressions over the path:

- **unbounded**: never counted nor refused (``/health``, ``/health/live``, the docs), so
  that a full service still says how it is;
- **streams**: long-lived answers (the jobs service's ``…/events``). They count like any
  request and may hold at most half the slots between them: watchers cannot leave ordinary
  requests with none, and the one stream too many is refused like any request past the
  limit, never left waiting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from aimesh.errors import Overloaded

__all__ = ["InFlight", "Slot"]

Slot = Literal["request", "stream"]
"""What a counted request holds until it ends (given back with :meth:`InFlight.leave`)."""


class InFlight:
    """The requests one process has in flight: at most ``limit``, streams at most half."""

    __slots__ = ("_requests", "_stream_paths", "_unbounded", "limit", "stream_limit", "streams")

    def __init__(
        self, limit: int, *, unbounded: Sequence[str] = (), streams: Sequence[str] = ()
    ) -> None:
        if limit < 1:
            raise ValueError(f"a limit of requests in flight is at least 1, not {limit}")
        self.limit = limit
        self.stream_limit = max(1, limit // 2)
        self._unbounded = [re.compile(pattern) for pattern in unbounded]
        self._stream_paths = [re.compile(pattern) for pattern in streams]
        self._requests = 0
        self.streams = 0

    @property
    def count(self) -> int:
        """Requests in flight now, streams included."""
        return self._requests + self.streams

    def enter(self, path: str) -> Slot | None:
        """Count a request to ``path``; :class:`Overloaded` when full; None: not counted."""
        if any(pattern.fullmatch(path) for pattern in self._unbounded):
            return None
        if self.count >= self.limit:
            raise Overloaded(
                f"{self.count} requests in flight, the limit is {self.limit}; retry shortly",
                limit=self.limit,
            )
        if any(pattern.fullmatch(path) for pattern in self._stream_paths):
            if self.streams >= self.stream_limit:
                raise Overloaded(
                    f"{self.streams} event streams open, the limit is {self.stream_limit} "
                    f"(half of {self.limit} requests in flight); retry shortly",
                    limit=self.stream_limit,
                )
            self.streams += 1
            return "stream"
        self._requests += 1
        return "request"

    def leave(self, slot: Slot | None) -> None:
        """Give back what :meth:`enter` counted."""
        if slot == "stream":
            self.streams -= 1
        elif slot == "request":
            self._requests -= 1

"""``server.request_timeout`` for request bodies, kept by the application on every engine.

Engines differ in what bounds a body that never comes: hypercorn's read timeout fires only
over HTTP/1 (a client's HTTP/2 PINGs keep the connection readable), uvicorn has none after
the head.  Either way the request would hold its in-flight slot for good.  A timer per
request showed in profiles (bench/README.md), so requests register in a dict instead
(a few hundred nanoseconds) and one sweep, four times per timeout and at least once a
second while any request waits, cancels those past their deadline: a late body gets its
408 within 1.25 times the timeout (or the timeout plus a second).
"""

from __future__ import annotations

import asyncio


class BodyDeadlines:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)
        self._waiting: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        # The sweep is a loop callback scheduled only while requests wait: none when idle.
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> asyncio.Task[object]:
        """The current task gets ``timeout`` seconds from now; pair with :meth:`disarm`."""
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        loop = task.get_loop()
        self._waiting[task] = loop.time() + self.timeout
        if self._sweep is None or self._loop is not loop:
            self._loop, self._sweep = loop, loop.call_later(self.interval, self._expire)
        return task

    def disarm(self, task: asyncio.Task[object]) -> None:
        self._waiting.pop(task, None)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether the CancelledError ``task`` is handling came from the sweep (then it is taken
        back, and the request is answered 408) rather than from the engine or a shutdown."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _expire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for task in [task for task, deadline in self._waiting.items() if deadline <= now]:
            del self._waiting[task]
            self._expired.add(task)
            task.cancel()
        self._sweep = self._loop.call_later(self.interval, self._expire) if self._waiting else None

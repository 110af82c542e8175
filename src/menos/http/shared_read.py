"""A database read behind an unauthenticated probe: shared by the probes that come while it
runs, and waited for only so long."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from menos import errors
from menos.queue import repository

T = TypeVar("T")

# Well inside Prometheus's default scrape timeout (10 s) and a load balancer's probe timeout
# (5 s and more): a database that does not answer at all still gives an answer saying so.
TIMEOUT_S = 4.0


class SharedRead(Generic[T]):
    """One read at a time: callers that come while it is still running (a database that
    stopped answering holds it until its command timeout) wait for that one instead of each
    taking another connection, and each waits at most `timeout_s`."""

    def __init__(
        self,
        read: Callable[[repository.Repository], Coroutine[Any, Any, T]],
        *,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._read = read
        self._timeout_s = timeout_s
        self._running: asyncio.Task[T] | None = None

    async def result(self, repo: repository.Repository) -> T:
        """The read's result; DatabaseUnavailable when the database is out of reach or too
        slow to answer. Any other fault is raised as it is."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._read(repo))
            # Its outcome may come after every caller has stopped waiting: retrieve it then.
            self._running.add_done_callback(lambda t: t.cancelled() or t.exception())
        running = self._running
        await asyncio.wait([running], timeout=self._timeout_s)
        if running.done() and not running.cancelled():  # cancelled: by close(), stopping
            return running.result()
        raise errors.DatabaseUnavailable(f"no answer within {self._timeout_s:g} s")

    async def close(self) -> None:
        """Stop a read still running at shutdown. It may not end at once (a cancelled query
        waits for the server to confirm): closing the pool then drops its connection."""
        running, self._running = self._running, None
        if running is not None and not running.done():
            running.cancel()
            await asyncio.wait([running], timeout=1.0)

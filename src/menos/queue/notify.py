"""LISTEN/NOTIFY plumbing shared by the worker and the dispatcher, a first-of wait, and the
backoff of loops that meet a database outage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import structlog

from menos import db

log = structlog.get_logger("menos.notify")

Handler = Callable[[Any, int, str, object], None]
BACKOFF_CAP_S = 10.0  # the longest wait between tries at an unavailable database


class Backoff:
    """How long a loop waits before trying again what keeps failing: `base_s`, doubled after
    each failure in a row up to `cap_s`; a success starts over. Each failure is logged as a
    warning `failed` (`error`, `failures` in a row, `retry_in_s`), or with `unexpected` as an
    error with its traceback instead of `error`; the first success after failures is logged as
    `recovered` (`after_failures`).

    During an outage every process's loops would otherwise try (and log) every `base_s`, and
    an error that stays (statements of a previous version on a migrated schema) at every poll.
    """

    def __init__(
        self,
        base_s: float,
        *,
        failed: str,
        recovered: str,
        cap_s: float = BACKOFF_CAP_S,
        unexpected: bool = False,
    ) -> None:
        self._base_s = base_s
        self._cap_s = max(cap_s, base_s)
        self._failed = failed
        self._recovered = recovered
        self._unexpected = unexpected
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Count and log a failure; returns the wait before the next try."""
        self.failures += 1
        wait = min(self._cap_s, self._base_s * 2.0 ** min(self.failures - 1, 32))
        if self._unexpected:
            log.error(self._failed, exc_info=exc, failures=self.failures, retry_in_s=wait)
        else:
            log.warning(
                self._failed,
                error=str(exc) or type(exc).__name__,
                failures=self.failures,
                retry_in_s=wait,
            )
        return wait

    def succeeded(self) -> None:
        """Start over, logging the end of the failures that came before, if any."""
        if self.failures:
            log.info(self._recovered, after_failures=self.failures)
        self.failures = 0


async def first(*aws: Awaitable[Any], timeout: float | None) -> None:
    """Wait until the first awaitable finishes or `timeout` passes; cancel the rest."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def listen(
    dsn: str,
    handlers: Mapping[str, Handler],
    *,
    on_connect: Callable[[], None],
    stop: asyncio.Event,
    retry_s: float,
) -> None:
    """LISTEN on each channel with its handler until `stop`; reconnect after any loss.

    `on_connect` runs after each (re)connection: notifications sent while disconnected are
    lost, so the caller looks for work once. A lost connection is tried again after
    `retry_s`; failed tries back off from there.
    """
    backoff = Backoff(retry_s, failed="listen_failed", recovered="listen_restored")
    while not stop.is_set():
        conn: asyncpg.Connection[Any] | None = None
        closed = asyncio.Event()
        wait = retry_s
        try:
            conn = await db.connect(dsn)
            # Idle between notifications by design: a role's or database's
            # idle_session_timeout would end it each time, losing the wake-ups meanwhile.
            await conn.execute("SET idle_session_timeout = 0")
            conn.add_termination_listener(lambda _c, lost=closed: lost.set())
            for channel, handler in handlers.items():
                await conn.add_listener(channel, handler)
            backoff.succeeded()
            on_connect()
            await first(closed.wait(), stop.wait(), timeout=None)
            if closed.is_set() and not stop.is_set():
                # The server ended the session (pg_terminate_backend, a crash, a shutdown).
                wait = backoff.failed(ConnectionError("the LISTEN connection was closed"))
        except Exception as exc:
            wait = backoff.failed(exc)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2)
        await first(stop.wait(), timeout=wait)

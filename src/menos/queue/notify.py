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
    each failure in a row up to `cap_s`; a success starts over.

    During an outage every process's loops would otherwise try (and log) every `base_s`.
    """

    def __init__(self, base_s: float, cap_s: float = BACKOFF_CAP_S) -> None:
        self._base_s = base_s
        self._cap_s = max(cap_s, base_s)
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; returns the wait before the next try."""
        self.failures += 1
        return min(self._cap_s, self._base_s * 2.0 ** min(self.failures - 1, 32))

    def succeeded(self) -> int:
        """Start over; returns how many failures in a row came before."""
        failures, self.failures = self.failures, 0
        return failures


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
    backoff = Backoff(retry_s)
    while not stop.is_set():
        conn: asyncpg.Connection[Any] | None = None
        closed = asyncio.Event()
        wait = retry_s
        try:
            conn = await db.connect(dsn)
            conn.add_termination_listener(lambda _c, lost=closed: lost.set())
            for channel, handler in handlers.items():
                await conn.add_listener(channel, handler)
            if failures := backoff.succeeded():
                log.info("listen_restored", after_failures=failures)
            on_connect()
            await first(closed.wait(), stop.wait(), timeout=None)
        except Exception as exc:
            wait = backoff.failed()
            log.warning(
                "listen_failed",
                error=str(exc) or type(exc).__name__,
                failures=backoff.failures,
                retry_in_s=wait,
            )
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2)
        await first(stop.wait(), timeout=wait)

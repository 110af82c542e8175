"""LISTEN/NOTIFY plumbing shared by the worker and the dispatcher, and a first-of wait."""

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
    lost, so the caller looks for work once.
    """
    while not stop.is_set():
        conn: asyncpg.Connection[Any] | None = None
        closed = asyncio.Event()
        try:
            conn = await db.connect(dsn)
            conn.add_termination_listener(lambda _c, lost=closed: lost.set())
            for channel, handler in handlers.items():
                await conn.add_listener(channel, handler)
            on_connect()
            await first(closed.wait(), stop.wait(), timeout=None)
        except Exception as exc:
            log.warning("listen_failed", error=str(exc) or type(exc).__name__)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2)
        await first(stop.wait(), timeout=retry_s)

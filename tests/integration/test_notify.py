"""The LISTEN connection, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import structlog.testing

from menos import db
from menos.queue import notify


@contextlib.asynccontextmanager
async def _listening(
    database_url: str, handler: Callable[..., None], *, retry_s: float
) -> AsyncIterator[tuple[asyncio.Queue[None], list[dict[str, Any]]]]:
    """`notify.listen` on channel `menos_test`, once connected: a queue that gets an item at
    each (re)connection after the first, and the log lines it wrote (complete on exit)."""
    connected = asyncio.Queue[None]()
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(
            notify.listen(
                database_url,
                {"menos_test": handler},
                on_connect=lambda: connected.put_nowait(None),
                stop=stop,
                retry_s=retry_s,
            )
        )
        try:
            await asyncio.wait_for(connected.get(), 10)
            yield connected, logs
        finally:
            stop.set()
            await running


async def test_a_listen_connection_the_server_ends_is_logged_and_restored(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """A LISTEN session ended by the server (pg_terminate_backend, a backend's crash) was
    reconnected without a line: its loss is logged as `listen_failed`, its return as
    `listen_restored`."""
    async with _listening(database_url, lambda *_: None, retry_s=0.05) as (connected, logs):
        ended = await pool.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query = 'LISTEN \"menos_test\"') ended"
        )
        assert ended == 1
        await asyncio.wait_for(connected.get(), 10)
    events = [e["event"] for e in logs]
    assert events == ["listen_failed", "listen_restored"]
    assert logs[0]["failures"] == 1


async def test_a_listen_connection_outlives_an_idle_session_timeout(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """A role or database with an idle_session_timeout shorter than the time between
    notifications had the server end the LISTEN session each time: workers and dispatchers
    lost their wake-ups and logged `listen_failed` every few seconds. It stays connected."""
    name = database_url.rsplit("/", 1)[1]
    await pool.execute(f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '200ms'")
    received = asyncio.Queue[str]()

    def handler(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        received.put_nowait(payload)

    async with _listening(database_url, handler, retry_s=5.0) as (_, logs):
        # A session of its own, idle as long: once the server has ended it, the timeout has
        # passed for the LISTEN session too.
        idle = await db.connect(database_url)
        ended = asyncio.Event()
        idle.add_termination_listener(lambda _conn: ended.set())
        try:
            await asyncio.wait_for(ended.wait(), 10)
        finally:
            idle.terminate()
        await pool.execute("SELECT pg_notify('menos_test', 'wake')")
        assert await asyncio.wait_for(received.get(), 10) == "wake"
    assert [e["event"] for e in logs] == []

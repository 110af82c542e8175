"""Small builders shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg

from menos import db
from menos.queue import models, repository
from menos.queue import worker as queue_worker

VERSION = "0.0.0-test"


async def unfiltered_content(
    repo: repository.Repository,
    *,
    owner: str | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> repository.Page[models.Content]:
    """A page of `owner`'s content (everyone's for None), no filter applied."""
    return await repo.list_content(
        owner=owner,
        status=None,
        content_type=None,
        tag=None,
        result_tag=None,
        after=after,
        limit=limit,
    )


def note(
    owner: str = "alice",
    *,
    key: str | None = None,
    callback_url: str | None = None,
    body: str = "# Note\n\nSome text about queues.",
) -> models.NewContent:
    """A submission; `key` makes it a web resource (dedup applies), else markdown."""
    return models.NewContent(
        owner=models.Owner(owner),
        content_type="web" if key else "markdown",
        resource_key=key,
        source_url="https://example.com/" if key else None,
        title=None,
        tags=[],
        body=body,
        source_metadata={},
        callback_url=callback_url,
        data_tier="compact",
        pipeline_version=VERSION,
    )


def worker_config(**overrides: Any) -> queue_worker.WorkerConfig:
    """A worker's config for tests: worker "w1", 2 slots, a 30 s lease; `overrides` replace."""
    fields: dict[str, Any] = {
        "worker_id": "w1",
        "concurrency": 2,
        "max_processing": 2,
        "lease_s": 30.0,
        "max_attempts": 3,
        "poll_s": 1.0,
        "shutdown_grace_s": 1.0,
        "pipeline_version": VERSION,
    }
    return queue_worker.WorkerConfig(**(fields | overrides))


async def owner(repo: repository.Repository, name: str = "alice") -> None:
    """Make sure an owner exists (through a key, as users do)."""
    await repo.create_key(name, "user")


class OneTransaction:
    """Stands in for a pool: every acquire hands out the same connection, inside one open
    transaction, so `pg_stat_xact_user_tables` holds the counts of all the repository did
    (the backend's own, unflushed: exact on every PostgreSQL version)."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        self.conn = conn

    async def acquire(self) -> asyncpg.pool.PoolConnectionProxy[Any]:
        return self.conn

    async def release(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        assert conn is self.conn

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.conn.fetchval(query, *args)


@contextlib.asynccontextmanager
async def one_transaction(database_url: str) -> AsyncIterator[OneTransaction]:
    """A pool stand-in whose work is one transaction, rolled back at the end."""
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                yield OneTransaction(conn)
            finally:
                await tx.rollback()
    finally:
        await pool.close()


async def sequential_scans(one: OneTransaction, tables: tuple[str, ...]) -> dict[str, int]:
    """Sequential scans of these `menos` tables in the transaction so far."""
    rows = await one.conn.fetch(
        "SELECT relname, seq_scan FROM pg_stat_xact_user_tables"
        " WHERE schemaname = 'menos' AND relname = ANY ($1::text[])",
        list(tables),
    )
    assert sorted(r["relname"] for r in rows) == sorted(tables)
    return {r["relname"]: r["seq_scan"] for r in rows}


def clock_ahead(by: dt.timedelta) -> types.ModuleType:
    """A `datetime` module whose `datetime.now()` runs `by` ahead: a host clock that is off,
    for a module's `dt` (monkeypatched), while the database keeps its own."""

    class FastClock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> FastClock:
            return cast(FastClock, dt.datetime.now(tz) + by)

    fast = types.ModuleType("datetime")
    fast.__dict__.update(vars(dt), datetime=FastClock)
    return fast


async def cancel_the_lock_waiter(pool: asyncpg.Pool[Any]) -> None:
    """Once a statement waits for a lock, cancel it as an operator would (pg_cancel_backend);
    a lock_timeout ends it the same way."""
    waiting = None
    while waiting is None:
        await asyncio.sleep(0.02)
        waiting = await pool.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        )
    await pool.execute("SELECT pg_cancel_backend($1)", waiting)

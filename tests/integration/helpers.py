"""Small builders shared by the integration tests."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from menos.queue import models, repository

VERSION = "0.0.0-test"


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


async def owner(repo: repository.Repository, name: str = "alice") -> None:
    """Make sure an owner exists (through a key, as users do)."""
    await repo.create_key(name, "user")


async def never_analyzed(one: asyncpg.Pool[Any], tables: tuple[str, ...]) -> None:
    """Keep autovacuum off these `menos` tables, so they stay never analyzed for the test;
    skips below PostgreSQL 15, whose statistics cannot be flushed on demand."""
    version = await one.fetchval("SELECT current_setting('server_version_num')::int")
    if version < 150000:
        pytest.skip("counting scans needs pg_stat_force_next_flush() (PostgreSQL 15 or later)")
    for table in tables:
        await one.execute(f"ALTER TABLE menos.{table} SET (autovacuum_enabled = off)")


async def sequential_scans(one: asyncpg.Pool[Any], tables: tuple[str, ...]) -> dict[str, int]:
    """Sequential scans of these `menos` tables so far, on a pool of one connection (the
    backend flushes its own counts when it goes idle after the first statement; the second
    reads them)."""
    await one.execute("SELECT pg_stat_force_next_flush()")
    rows = await one.fetch(
        "SELECT relname, seq_scan, last_autoanalyze FROM pg_stat_user_tables"
        " WHERE schemaname = 'menos' AND relname = ANY ($1::text[])",
        list(tables),
    )
    assert sorted(r["relname"] for r in rows) == sorted(tables)
    assert all(r["last_autoanalyze"] is None for r in rows)
    return {r["relname"]: r["seq_scan"] for r in rows}

"""Session-wide PostgreSQL: one migrated template, a fresh copy per test that asks for one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from menos import db
from menos.queue import repository
from tests.support import postgres


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the session's PostgreSQL server (see tests/support/postgres.py for the order)."""
    with postgres.server(tmp_path_factory.mktemp("pg") / "home") as (how, dsn):
        os.environ["MENOS_TEST_PG_SOURCE"] = how
        yield dsn


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    """A database migrated once per session, copied for each test."""

    async def make() -> str:
        name = await postgres.create_database(pg_admin_dsn)
        conn = await db.connect(postgres.with_database(pg_admin_dsn, name))
        try:
            await db.migrate(conn, db.Queries())
        finally:
            await conn.close()
        return name

    name = asyncio.run(make())
    yield name
    asyncio.run(postgres.drop_database(pg_admin_dsn, name))


@pytest.fixture
async def database_url(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = await postgres.create_database(pg_admin_dsn, template=template_db)
    yield postgres.with_database(pg_admin_dsn, name)
    await postgres.drop_database(pg_admin_dsn, name)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A connection pool on the test's database."""
    made = await db.create_pool(database_url, min_size=1, max_size=12)
    yield made
    await made.close()


@pytest.fixture
def repo(pool: asyncpg.Pool[Any]) -> repository.Repository:
    """The repository over the test's database."""
    return repository.Repository(pool, db.Queries())

"""Where tests get a real PostgreSQL: MENOS_TEST_DATABASE_URL, else Docker, else embedded."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from menos import embedded


def with_database(dsn: str, name: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def docker_answers(timeout_s: float = 1.0) -> bool:
    """Whether a Docker daemon answers on its socket (quickly: no daemon is the common case)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return False
    path = host.removeprefix("unix://")
    if not Path(path).exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in sock.recv(1024)
        except OSError:
            return False


@contextmanager
def server(home: Path) -> Iterator[tuple[str, str]]:
    """(how, DSN) of a PostgreSQL server for this test session, in the fixture order of STYLE."""
    configured = os.environ.get("MENOS_TEST_DATABASE_URL")
    if configured:
        yield "MENOS_TEST_DATABASE_URL", configured
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield "testcontainers", container.get_connection_url()
        return
    pg = embedded.EmbeddedPostgres(
        home, Path(os.environ["MENOS_PG_BINDIR"]) if os.environ.get("MENOS_PG_BINDIR") else None
    )
    running = pg.start(detached=False)
    try:
        yield "embedded", running.dsn
    finally:
        pg.stop()


async def create_database(admin_dsn: str, *, template: str | None = None) -> str:
    """A fresh database (optionally a copy of `template`); returns its name."""
    name = f"menos_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        # Test-only DDL: the names are generated here, never user input.
        suffix = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await conn.close()
    return name


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a test database, disconnecting whoever is still on it."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()

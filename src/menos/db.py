"""PostgreSQL plumbing: connection pools, the named-query loader and the migrations runner."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import msgspec
import structlog

from menos import errors, storable

log = structlog.get_logger("menos.db")

Pool: TypeAlias = "asyncpg.Pool[Any]"  # what callers above the repository may hold

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# A migration needing a lock that another session holds (an open transaction that read a
# menos table) would wait for it with every later statement on that table queued behind
# it: it gives up after MIGRATION_LOCK_WAIT_S, names the sessions in long transactions,
# and tries again after MIGRATION_RETRY_S, while those statements run.
MIGRATION_LOCK_WAIT_S = 2.0
MIGRATION_RETRY_S = 3.0
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a protocol out of step after a server shutdown
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A standby, or a database set read-only: no write can be done until that changes.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # A full disk or no memory left: the same, until space is made. Not all of SQLSTATE class
    # 53: a limit the operator set (temp_file_limit, 53400) fails that statement every time.
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.OutOfMemoryError,
    TimeoutError,
)
# What the server answers when it gave up on a statement rather than losing the connection: a
# lock waited for past the role's lock_timeout, its statement_timeout (a migration or a psql
# session holding a menos table), an operator's pg_cancel_backend, a deadlock or serialization
# failure it broke. Nothing was written: the statement can be tried again.
STATEMENT_GAVE_UP: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.TransactionRollbackError,
)
# What connecting can raise besides an outage: the server refusing this login or database
# (wrong password, no such database), or a DSN asyncpg cannot use (a port out of range).
CONNECT_REFUSALS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
    ValueError,
    OverflowError,
)


def sql_dir() -> Path:
    """Where the `.sql` files are: inside the installed package, else the source checkout."""
    packaged = Path(str(resources.files("menos"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


class Queries(Mapping[str, str]):
    """The named queries of `sql/queries/*.sql`, each introduced by `-- name: NAME`."""

    def __init__(self, directory: Path | None = None) -> None:
        self._queries: dict[str, str] = {}
        for path in sorted((directory or sql_dir() / "queries").glob("*.sql")):
            text = path.read_text(encoding="utf-8")
            marks = list(_NAME.finditer(text))
            for mark, following in zip(marks, [*marks[1:], None], strict=True):
                end = following.start() if following else len(text)
                name = mark.group(1)
                if name in self._queries:
                    raise ValueError(f"query {name!r} is defined twice")
                self._queries[name] = text[mark.end() : end].strip()

    def __getitem__(self, name: str) -> str:
        return self._queries[name]

    def __iter__(self) -> Any:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


# A `\u0000` escape that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def _encode_json(value: Any) -> bytes:
    """JSON text PostgreSQL accepts: its JSON types refuse NUL characters and lone surrogates
    (which a model's answer, an error body or an exception's message may hold), so they are
    stored as U+FFFD."""
    try:
        text = msgspec.json.encode(value)
    except UnicodeEncodeError:  # a lone surrogate: UTF-8 cannot hold it
        text = msgspec.json.encode(storable.anything(msgspec.to_builtins(value)))
    if b"\\u0000" in text:
        text = _NUL_ESCAPE.sub(rb"\1\\ufffd", text)
    return text


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + _encode_json(value)  # jsonb's binary format: version 1, then text


def _decode_jsonb(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


# What every menos session sets as it is made, in one round trip (startup parameters would
# stop a pooler such as PgBouncer), whatever the role or database has set:
# - search_path: menos names its own objects with their schema; the built-in functions it calls
#   bare (now(), gen_random_uuid(), pg_notify(), make_interval()) must be PostgreSQL's. A
#   search_path naming a schema before pg_catalog had that schema's functions of those names
#   run instead: jobs stamped with its time, every callback event given its one id.
# - default_transaction_isolation: menos's transactions are written for READ COMMITTED (a
#   claim sees what committed while it waited for its turn); under repeatable read or
#   serializable, claims, submissions and outcomes failed with serialization errors.
_SESSION_SETTINGS = (
    "SET search_path = pg_catalog, pg_temp; SET default_transaction_isolation = 'read committed'"
)


async def _init_connection(
    conn: asyncpg.Connection[Any], *, statement_timeout_s: float | None = None
) -> None:
    settings = _SESSION_SETTINGS
    if statement_timeout_s is not None:
        settings += f"; SET statement_timeout = {round(statement_timeout_s * 1000)}"
    await conn.execute(settings)
    # Binary, so that rows and composite values holding JSON (a claimed job with its content)
    # decode too; text codecs cannot be used inside a composite.
    await conn.set_type_codec(
        "json",
        encoder=_encode_json,
        decoder=msgspec.json.decode,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )


def _unavailable(exc: BaseException, timeout: float) -> errors.DatabaseUnavailable:
    """DatabaseUnavailable saying why: a connect timeout (a server that accepts connections
    but does not answer, a dropped route) is a TimeoutError without a message."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return errors.DatabaseUnavailable(f"the database did not answer within {timeout:g} s")
    # The driver's words alone ("[Errno 111] Connect call failed ('127.0.0.1', 5432)") do not
    # say what could not be reached.
    return errors.DatabaseUnavailable(
        f"cannot connect to the database: {str(exc) or type(exc).__name__}"
    )


# The `application_name` of this process's sessions (`menos worker`, as the command line sets
# it), so that pg_stat_activity tells an API from a worker; one the DSN gives is kept.
application_name = "menos"


def _server_settings(dsn: str) -> dict[str, str] | None:
    try:
        named = "application_name" in urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
    except ValueError:  # not a URL: asyncpg says so
        named = False
    return None if named else {"application_name": application_name}


async def connect(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection[Any]:
    """One connection with menos's JSON codecs; DatabaseUnavailable when it cannot be made."""
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            dsn, timeout=timeout, server_settings=_server_settings(dsn)
        )
    except CONNECT_REFUSALS as exc:
        raise _unavailable(exc, timeout) from exc
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Pool release hook: menos leaves no session state behind (its session-level advisory
    lock is released explicitly and LISTEN uses connections of its own), so the default
    reset (UNLISTEN, RESET ALL, unlock all, CLOSE ALL: a round trip per release) is skipped."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 10.0,
    statement_timeout_s: float | None = None,
) -> asyncpg.Pool[Any]:
    """A connection pool with menos's JSON codecs; DatabaseUnavailable when it cannot connect.

    `statement_timeout_s` has the server end any statement of the pool's that runs longer
    (set on each connection as it is made: a startup parameter would stop a pooler)."""

    async def init(conn: asyncpg.Connection[Any]) -> None:
        try:
            await _init_connection(conn, statement_timeout_s=statement_timeout_s)
        except BaseException:
            # The pool closes a connection whose init failed gracefully, waiting up to the
            # command timeout (60 s) for a server that may not answer (a pooler that took the
            # login but has no server for it): a deadline cutting the init short would wait
            # that long. The connection is given up on anyway.
            conn.terminate()
            raise

    try:
        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init,
            reset=_keep_session,
            timeout=timeout,
            command_timeout=60,
            max_inactive_connection_lifetime=300,
            server_settings=_server_settings(dsn),
        )
    except CONNECT_REFUSALS as exc:
        raise _unavailable(exc, timeout) from exc
    return pool


# How long closing a pool waits for its connections to end before it drops them: a database
# that stopped answering would hold a stopping process up for a minute.
CLOSE_TIMEOUT_S = 5.0


async def close_pool(pool: asyncpg.Pool[Any], *, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close `pool` gracefully, or after `timeout_s` by dropping its connections."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        pool.terminate()


def migrations(directory: Path | None = None) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file, in order: the files this process found
    when it first looked. A process runs the code it started with, so the schema it needs is
    that of its files then (a checkout upgraded under a running API does not make its
    `/ready` say `outdated`)."""
    return list(_migration_files((directory or sql_dir() / "migrations").resolve()))


@functools.cache
def _migration_files(directory: Path) -> tuple[tuple[int, str, str], ...]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append((int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    return tuple(found)


def _checksum(sql: str) -> str:
    """SHA-256 of a migration's text, line endings normalized (a CRLF checkout is the same file)."""
    return hashlib.sha256(sql.replace("\r\n", "\n").encode("utf-8")).hexdigest()


async def migrate(conn: asyncpg.Connection[Any], queries: Queries) -> list[int]:
    """Apply pending migrations in order, each in a transaction, under an advisory lock.

    Safe to run from several processes at once; returns the versions applied now. Raises
    SchemaMismatch, applying nothing, when an applied version was recorded under another
    name or with other contents than this code's file: migrations are forward-only, never
    edited once applied. (A version recorded before checksums were kept gets its checksum.)

    A database with nothing to apply is only read: a role that may read and write menos's
    rows but not change its schema can start. MigrationFailed names what a role that may
    not change the schema lacks when something is to be applied.
    """
    try:
        if await _up_to_date(conn, queries):
            return []
        return await _migrate_locked(conn, queries)
    except (*CONNECTION_ERRORS, *STATEMENT_GAVE_UP) as exc:
        raise _lost(exc, "the database could not be migrated") from exc


def _lost(exc: BaseException, what: str) -> errors.DatabaseUnavailable:
    """DatabaseUnavailable for a connection lost mid-work, naming the first error: a
    transaction's exit names only the closed connection."""
    cause: BaseException = exc
    while isinstance(cause.__context__, CONNECTION_ERRORS):
        cause = cause.__context__
    return errors.DatabaseUnavailable(f"{what}: {str(cause) or type(cause).__name__}")


async def _migrate_locked(conn: asyncpg.Connection[Any], queries: Queries) -> list[int]:
    applied_now: list[int] = []
    await conn.execute(queries["migrations_lock"])
    try:
        try:
            # Its ALTER TABLE waits, as a migration does, for a session that read the table.
            await _when_unlocked(
                conn, queries, "menos.schema_migrations", queries["migrations_table"]
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            raise errors.MigrationFailed(
                f"this database role cannot migrate the schema: {exc} (migrating needs a role"
                " that may create schemas in the database and owns the menos schema's tables:"
                " run `bin/menos migrate` once as that role)"
            ) from exc
        done = await check_applied(conn, queries)
        for version, name, sql in migrations():
            if version in done:
                if done[version]["checksum"] is None:
                    await conn.execute(
                        queries["migrations_record_checksum"], version, _checksum(sql)
                    )
                continue
            await _apply(conn, queries, version, name, sql)
            applied_now.append(version)
    finally:
        if not conn.is_closed():  # else the lock ended with its session
            await conn.execute(queries["migrations_unlock"])
    return applied_now


async def _apply(
    conn: asyncpg.Connection[Any], queries: Queries, version: int, name: str, sql: str
) -> None:
    """Apply one migration and record it, in one transaction; tried again for as long as
    the locks it needs are held by other sessions."""
    file = f"{version:04d}_{name}.sql"
    try:
        await _when_unlocked(
            conn, queries, file, sql, (queries["migrations_record"], version, name, _checksum(sql))
        )
    except asyncpg.PostgresError as exc:
        raise errors.MigrationFailed(f"migration {file} failed and was rolled back: {exc}") from exc


async def _when_unlocked(
    conn: asyncpg.Connection[Any], queries: Queries, what: str, sql: str, *then: tuple[Any, ...]
) -> None:
    """Run `sql`, then each (statement, *arguments) of `then`, in one transaction whose
    statements wait MIGRATION_LOCK_WAIT_S for a lock; after each such wait, log the sessions
    in long transactions and try again after MIGRATION_RETRY_S."""
    while True:
        try:
            async with conn.transaction():
                await conn.execute(queries["migrations_lock_timeout"], MIGRATION_LOCK_WAIT_S)
                await conn.execute(sql)
                for statement, *args in then:
                    await conn.execute(statement, *args)
            return
        except asyncpg.LockNotAvailableError:
            holders = await conn.fetch(
                queries["migrations_long_transactions"], MIGRATION_LOCK_WAIT_S
            )
            log.warning(
                "migration_waiting_for_locks",
                migration=what,
                retry_in_s=MIGRATION_RETRY_S,
                sessions=[dict(holder) for holder in holders],
            )
        await asyncio.sleep(MIGRATION_RETRY_S)


async def _up_to_date(conn: asyncpg.Connection[Any], queries: Queries) -> bool:
    """Whether every migration file is applied and recorded with its checksum, read without
    writing; SchemaMismatch when an applied one is not this code's file."""
    if not await conn.fetchval(queries["migrations_table_exists"]):
        return False
    try:
        done = await check_applied(conn, queries)
    except asyncpg.UndefinedColumnError:  # recorded before checksums were kept
        return False
    return all(
        version in done and done[version]["checksum"] is not None for version, _, _ in migrations()
    )


async def check_applied(
    conn: asyncpg.Connection[Any], queries: Queries
) -> dict[int, asyncpg.Record]:
    """The applied migrations by version; SchemaMismatch when one is not this code's file
    (another name or other contents)."""
    done = {row["version"]: row for row in await conn.fetch(queries["migrations_recorded"])}
    for version, name, sql in migrations():
        if version in done:
            _same_migration(done[version], name, _checksum(sql))
    return done


# Checksums of texts of a migration that a build applied before the file was edited: such a
# database is brought to today's objects by a later migration (0015), not refused.
SUPERSEDED = {
    11: frozenset({"33c2a23ebc5a34bbfb6f82142e8be6e6ff401e9fa61e300acf4dcd4dda18ea27"}),
    12: frozenset(
        {
            "6edf11ff8f92463de8a5bdee0c001af8ebe3258ba68383e5a90561202baa28c1",
            "1f1fc14a68b9d9132c5ec4ebecf6f8bef2fb8640a80190aef399eef2a757cfee",
        }
    ),
}


def _same_migration(recorded: asyncpg.Record, name: str, checksum: str) -> None:
    """Raise SchemaMismatch unless the applied migration `recorded` is this file."""
    version = recorded["version"]
    file = f"{version:04d}_{name}.sql"
    if recorded["name"] != name:
        raise errors.SchemaMismatch(
            f"migration {version} applied to this database is {recorded['name']!r}, but this "
            f"code's is {file}: the database was migrated by another version of menos"
        )
    if recorded["checksum"] not in (None, checksum, *SUPERSEDED.get(version, ())):
        raise errors.SchemaMismatch(
            f"migration {file} applied to this database had other contents than this code's: "
            "the database was migrated by another version of menos"
        )


async def require_current(conn: asyncpg.Connection[Any], queries: Queries) -> None:
    """For the commands that do not migrate: SchemaOutdated when a migration is pending,
    SchemaMismatch when one applied is not this code's, DatabaseUnavailable when the
    connection is lost meanwhile (the server stopped as the command started) or the server
    gave up on the check (STATEMENT_GAVE_UP)."""
    try:
        pending = await pending_migrations(conn, queries)
        if pending:
            raise errors.SchemaOutdated(
                f"migrations {pending} are not applied; run `bin/menos migrate` first"
            )
        await check_applied(conn, queries)
    except (*CONNECTION_ERRORS, *STATEMENT_GAVE_UP) as exc:
        raise _lost(exc, "the database schema could not be checked") from exc


async def pending_migrations(conn: asyncpg.Connection[Any], queries: Queries) -> list[int]:
    """Versions present as files but not applied to this database."""
    exists = await conn.fetchval(queries["migrations_table_exists"])
    done = (
        {row["version"] for row in await conn.fetch(queries["migrations_applied"])}
        if exists
        else set()
    )
    return [version for version, _, _ in migrations() if version not in done]

"""The SQL examples of docs/sql.md run as printed against a migrated database with some jobs,
and the backup of docs/operations.md restores."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from menos import db, embedded
from menos.queue import repository
from tests.integration import helpers
from tests.support import postgres
from tests.support.processes import ROOT

DOC = ROOT / "docs" / "sql.md"
VIEWS = (
    "menos.job_overview",
    "menos.active_jobs",
    "menos.stuck_jobs",
    "menos.failed_jobs",
    "menos.callback_backlog",
)

# One owner with a job in each interesting state: pending, processing with an expired lease,
# failed with a callback still to deliver, completed with its callback delivered.
SEED = """
INSERT INTO menos.owner (name, webhook_secret)
VALUES ('alice', 'whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=');

INSERT INTO menos.content (content_id, owner, content_type, resource_key, source_url, body,
                           pipeline_version, latest_job_id)
VALUES
    ('01a20000-0000-7000-8000-000000000001', 'alice', 'web', 'url:DxFdsGK3wN0DCxaH',
     'https://example.com/', NULL, '0.1.0', '01a20000-0000-7000-8000-00000000000a'),
    ('01a20000-0000-7000-8000-000000000002', 'alice', 'markdown',
     'cid:01a20000-0000-7000-8000-000000000002', NULL, '# Running', '0.1.0',
     '01a20000-0000-7000-8000-00000000000b'),
    ('01a20000-0000-7000-8000-000000000003', 'alice', 'youtube', 'yt:dQw4w9WgXcQ',
     'https://youtu.be/dQw4w9WgXcQ', NULL, '0.1.0', '01a20000-0000-7000-8000-00000000000c'),
    ('01a20000-0000-7000-8000-000000000004', 'alice', 'markdown',
     'cid:01a20000-0000-7000-8000-000000000004', NULL, '# Done', '0.1.0',
     '01a20000-0000-7000-8000-00000000000d');

INSERT INTO menos.pipeline_job (job_id, content_id, owner, resource_key, pipeline_version,
                                callback_url, created_at)
SELECT job_id::uuid, content_id::uuid, 'alice', resource_key, '0.1.0', callback_url,
       now() - interval '1 minute'
  FROM (VALUES
    ('01a20000-0000-7000-8000-00000000000a', '01a20000-0000-7000-8000-000000000001',
     'url:DxFdsGK3wN0DCxaH', NULL),
    ('01a20000-0000-7000-8000-00000000000b', '01a20000-0000-7000-8000-000000000002',
     'cid:01a20000-0000-7000-8000-000000000002', NULL),
    ('01a20000-0000-7000-8000-00000000000c', '01a20000-0000-7000-8000-000000000003',
     'yt:dQw4w9WgXcQ', 'https://hooks.example.org/menos'),
    ('01a20000-0000-7000-8000-00000000000d', '01a20000-0000-7000-8000-000000000004',
     'cid:01a20000-0000-7000-8000-000000000004', 'https://hooks.example.org/menos')
  ) AS j (job_id, content_id, resource_key, callback_url);

UPDATE menos.pipeline_job
   SET status = 'processing', attempts = 1, worker_id = 'host:1:abc123',
       started_at = now() - interval '50 seconds', current_stage = 'analyze',
       lease_expires_at = now() - interval '10 seconds',
       stages = jsonb_build_array(
           jsonb_build_object('name', 'fetch', 'started_at', now() - interval '50 seconds',
                              'finished_at', now() - interval '49 seconds', 'duration_ms', 1000.0))
 WHERE job_id = '01a20000-0000-7000-8000-00000000000b';

UPDATE menos.pipeline_job
   SET status = 'failed', attempts = 1, worker_id = 'host:1:abc123',
       started_at = now() - interval '40 seconds', finished_at = now() - interval '39 seconds',
       error_code = 'SOURCE_NOT_FOUND', error_stage = 'fetch',
       error_message = 'video dQw4w9WgXcQ has no transcript in the languages en',
       diagnostics = '{"error": {"code": "SOURCE_NOT_FOUND", "stage": "fetch"}}',
       stages = jsonb_build_array(
           jsonb_build_object('name', 'fetch', 'started_at', now() - interval '40 seconds',
                              'finished_at', now() - interval '39 seconds', 'duration_ms', 850.5))
 WHERE job_id = '01a20000-0000-7000-8000-00000000000c';

UPDATE menos.pipeline_job
   SET status = 'completed', attempts = 1, worker_id = 'host:1:abc123',
       started_at = now() - interval '30 seconds', finished_at = now() - interval '29 seconds',
       diagnostics = '{"analyzer": "builtin", "model": "builtin"}',
       stages = (SELECT jsonb_agg(jsonb_build_object(
                     'name', name, 'started_at', now() - interval '30 seconds',
                     'finished_at', now() - interval '29 seconds', 'duration_ms', 12.5))
                   FROM unnest(ARRAY['fetch', 'prepare', 'analyze', 'parse', 'persist']) AS name)
 WHERE job_id = '01a20000-0000-7000-8000-00000000000d';

UPDATE menos.callback_outbox
   SET status = 'delivered', attempts = 1, last_status_code = 204, delivered_at = now()
 WHERE job_id = '01a20000-0000-7000-8000-00000000000d';

UPDATE menos.callback_outbox
   SET attempts = 1, last_status_code = 500, last_error = 'HTTP 500',
       next_attempt_at = now() + interval '2 seconds'
 WHERE job_id = '01a20000-0000-7000-8000-00000000000c';

INSERT INTO menos.audit_event (event, owner, subject, detail)
SELECT 'audit.callback_delivery', owner, job_id,
       jsonb_build_object('event_id', event_id::text, 'url', url, 'attempt', 1,
                          'outcome', 'failed', 'status_code', 500, 'error', 'HTTP 500',
                          'status', 'pending')
  FROM menos.callback_outbox;
"""


def documented_statements() -> list[str]:
    """Every statement of every ```sql block in docs/sql.md, in order."""
    blocks = re.findall(r"^```sql\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    statements = []
    for block in blocks:
        for part in re.split(r";[ \t]*(?:\n|$)", block):
            lines = [line for line in part.splitlines() if not line.strip().startswith("--")]
            code = "\n".join(lines)
            if code.strip():
                statements.append(code.strip())
    return statements


async def run_all(dsn: str) -> dict[str, list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SEED)
        results = {}
        for statement in documented_statements():
            try:
                results[statement] = await conn.fetch(statement)
            except asyncpg.PostgresError as exc:
                raise AssertionError(f"documented query fails: {exc}\n{statement}") from exc
        return results
    finally:
        await conn.close()


async def test_every_documented_query_runs(database_url: str) -> None:
    """Each SQL example in docs/sql.md runs without error on a migrated database with jobs."""
    statements = documented_statements()
    assert len(statements) >= 10, "docs/sql.md lost its ```sql examples"
    results = await run_all(database_url)
    assert list(results) == statements


async def test_each_view_example_shows_the_jobs(database_url: str) -> None:
    """The example for each of the five views returns rows when there are jobs to show."""
    results = await run_all(database_url)
    for view in VIEWS:
        examples = [s for s in results if re.search(rf"\bFROM {re.escape(view)}\b", s)]
        assert examples, f"docs/sql.md has no example querying {view}"
        assert all(results[s] for s in examples), f"an example of {view} returned no rows"


async def test_job_overview_lists_all_five_statuses(database_url: str) -> None:
    """The overview example shows one row per status with the right counts."""
    results = await run_all(database_url)
    overview = next(s for s in results if "FROM menos.job_overview" in s)
    counts = {row["status"]: row["jobs"] for row in results[overview]}
    assert counts == {
        "pending": 1,
        "processing": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }


async def test_the_documented_cancel_and_reprocess_act_as_the_api_does(database_url: str) -> None:
    """docs/sql.md's psql recipes: the pending job ends cancelled and its content shows it; the
    completed content gets a new pending job that it names (a plain INSERT left it naming the
    job before, which it mirrored), and no second one while that job is active; both are
    audited as done through psql."""
    results = await run_all(database_url)
    [reprocess] = [s for s in results if "audit.reprocess_trigger" in s]
    [new_job] = [row["job_id"] for row in results[reprocess]]
    conn = await asyncpg.connect(database_url)
    try:
        cancelled = await conn.fetchrow(
            "SELECT j.status, j.finished_at, c.processing_status FROM menos.pipeline_job j"
            " JOIN menos.content c USING (content_id)"
            " WHERE j.job_id = '01a20000-0000-7000-8000-00000000000a'"
        )
        assert cancelled["status"] == cancelled["processing_status"] == "cancelled"
        assert cancelled["finished_at"] is not None
        content = await conn.fetchrow(
            "SELECT c.latest_job_id, c.processing_status, j.status FROM menos.content c"
            " JOIN menos.pipeline_job j ON j.job_id = c.latest_job_id"
            " WHERE c.content_id = '01a20000-0000-7000-8000-000000000004'"
        )
        assert tuple(content) == (new_job, "pending", "pending")
        assert await conn.fetch(reprocess) == []  # its job is active: nothing more
        audited = await conn.fetch(
            "SELECT event, subject FROM menos.audit_event WHERE detail ->> 'via' = 'psql'"
            " ORDER BY audit_id"
        )
        assert [tuple(row) for row in audited] == [
            ("audit.cancellation", uuid.UUID("01a20000-0000-7000-8000-00000000000a")),
            ("audit.reprocess_trigger", uuid.UUID("01a20000-0000-7000-8000-000000000004")),
        ]
    finally:
        await conn.close()


async def test_the_documented_cancel_and_reprocess_audit_what_the_api_does(
    database_url: str,
) -> None:
    """docs/sql.md's psql recipes store the detail docs/operations.md lists for each audit
    event: a cancellation's outcome and previous status, a reprocess's outcome, job and force."""
    await run_all(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT event, detail FROM menos.audit_event WHERE detail ->> 'via' = 'psql'"
            " ORDER BY audit_id"
        )
    finally:
        await conn.close()
    details = {row["event"]: json.loads(row["detail"]) for row in rows}
    assert details["audit.cancellation"] == {
        "via": "psql",
        "outcome": "cancelled",
        "previous_status": "pending",
    }
    reprocess = details["audit.reprocess_trigger"]
    assert reprocess.keys() == {"via", "outcome", "job_id", "force"}
    assert (reprocess["outcome"], reprocess["force"]) == ("submitted", True)


def test_docs_name_every_view() -> None:
    """docs/sql.md describes every inspection view the migrations create."""
    text = DOC.read_text(encoding="utf-8")
    migrations = "".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "sql" / "migrations").glob("*.sql")
    )
    created = set(re.findall(r"CREATE (?:OR REPLACE )?VIEW (menos\.\w+)", migrations))
    assert created == set(VIEWS)
    assert all(f"`{view}`" in text for view in created)


async def test_the_documented_backup_restores_into_a_new_database(
    pg_admin_dsn: str, template_db: str, database_url: str, tmp_path: Path
) -> None:
    """docs/operations.md's backup and restore, with the commands it prints: the restored
    database holds the same keys, content and jobs, and has no migration left to apply."""
    bindir = embedded.default_bindir()
    pool = await db.create_pool(database_url, max_size=2)
    try:
        repo = repository.Repository(pool, db.Queries())
        key = (await repo.create_key("alice", "user")).api_key
        for body in ("# One\n\nA note.", "# Two\n\nAnother note."):
            await repo.enqueue(helpers.note(body=body, callback_url="https://example.com/hook"))
        before = await _snapshot(pool)
    finally:
        await pool.close()
    server = int(await _scalar(database_url, "SHOW server_version_num")) // 10000
    if f" {server}." not in await _run(bindir / "pg_dump", "--version"):
        pytest.skip(f"the backup needs PostgreSQL {server}'s own pg_dump, not {bindir}'s")
    dump = tmp_path / "menos.dump"
    await _run(bindir / "pg_dump", "-Fc", "-n", "menos", "-f", dump, database_url)
    # the new home: migrated as `bin/menos db start` leaves it
    target = postgres.with_database(
        pg_admin_dsn, await postgres.create_database(pg_admin_dsn, template=template_db)
    )
    await _run(bindir / "pg_restore", "--clean", "--if-exists", "-d", target, dump)
    pool = await db.create_pool(target, max_size=2)
    try:
        restored = repository.Repository(pool, db.Queries())
        assert await restored.principal(key) is not None
        assert await _snapshot(pool) == before
        async with pool.acquire() as conn:
            assert await db.migrate(conn, db.Queries()) == []
    finally:
        await pool.close()


async def _snapshot(pool: asyncpg.Pool[Any]) -> list[Any]:
    return [
        tuple(await pool.fetch(f"SELECT * FROM menos.{table} ORDER BY 1"))
        for table in ("owner", "api_key", "content", "pipeline_job", "callback_outbox")
    ]


async def _run(*command: str | Path) -> str:
    """Run a command; its standard output, or an assertion naming what it said."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (command, err.decode())
    return out.decode()


async def _scalar(dsn: str, query: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()

"""The SQL rules of the queue, one per test, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tracemalloc
import uuid
from typing import Any, cast

import asyncpg
import pytest
import structlog
import structlog.testing

from menos import db, errors
from menos.queue import group_commit, maintenance, models, repository, rescuer
from tests.integration import helpers
from tests.support import tcp_proxy
from tests.support.processes import ROOT

LEASE = 30.0
QUEUE_TABLES = ("pipeline_job", "content")


async def claim(
    repo: repository.Repository,
    worker: str,
    n: int,
    cap: int = 1000,
    now: dt.datetime | None = None,
) -> list[models.Claimed]:
    return await repo.claim(
        worker, n, max_processing=cap, lease_s=LEASE, pipeline_version=helpers.VERSION, now=now
    )


async def forced_reprocess(
    repo: repository.Repository, content_id: uuid.UUID, transcript: str | None = None
) -> None:
    """A forced reprocess of an item whose job has ended: a new job is submitted."""
    outcome = await repo.reprocess(
        content_id,
        owner=None,
        force=True,
        pipeline_version=helpers.VERSION,
        callback_url=None,
        data_tier="compact",
        transcript=transcript,
    )
    assert outcome is not None and outcome.status == "submitted"


async def test_two_claimers_never_get_the_same_job(repo: repository.Repository) -> None:
    """Concurrent claimers split the pending jobs: no job is handed to two workers."""
    await helpers.owner(repo)
    for _round in range(15):
        for _ in range(20):
            await repo.enqueue(helpers.note())
        batches = await asyncio.gather(*(claim(repo, f"w{i}", 3) for i in range(8)))
        ids = [c.job.job_id for batch in batches for c in batch]
        assert len(ids) == len(set(ids)) == 20
        for batch in batches:
            for c in batch:
                guard = repository.Guard(c.job.job_id, c.job.worker_id or "", c.job.attempts)
                assert await repo.fail(
                    guard,
                    code="PIPELINE_EXCEPTION",
                    stage="fetch",
                    message="done",
                    stages=[],
                    diagnostics={},
                    full_payload=None,
                )


async def test_concurrent_identical_submissions_make_one_job(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Twenty simultaneous submissions of one URL give one new job and 19 deduplicated answers."""
    await helpers.owner(repo)
    answers = await asyncio.gather(*(repo.enqueue(helpers.note(key="url:same")) for _ in range(20)))
    assert sum(not a.deduplicated for a in answers) == 1
    assert len({a.job_id for a in answers}) == 1
    assert len({a.content_id for a in answers}) == 1
    assert await pool.fetchval("SELECT count(*) FROM menos.pipeline_job") == 1


async def test_global_cap_holds_with_several_claimers(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """However many workers claim at once, no more than the cap are processing."""
    await helpers.owner(repo)
    for _ in range(40):
        await repo.enqueue(helpers.note())
    for _round in range(5):
        await asyncio.gather(*(claim(repo, f"w{i}", 4, cap=3) for i in range(10)))
        processing = await pool.fetchval(
            "SELECT count(*) FROM menos.pipeline_job WHERE status = 'processing'"
        )
        assert processing == 3
    assert len(await claim(repo, "late", 4, cap=3)) == 0


async def test_guarded_complete_after_rescue_changes_nothing(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A worker whose lease expired and was rescued cannot complete the job any more."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(callback_url="https://example.com/hook"))
    (held,) = await claim(repo, "slow", 1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEASE + 1)
    rescued, refused = await repo.rescue_expired(max_attempts=3, now=later)
    assert [r.status for r in rescued] == ["pending"] and refused == []
    assert [r.lost_worker_id for r in rescued] == ["slow"]  # the job's own is cleared
    guard = repository.Guard(held.job.job_id, "slow", held.job.attempts)
    done = await repo.complete(
        guard, result={"summary": "late"}, tags=[], stages=[], diagnostics={}, full_payload=None
    )
    assert done is None
    row = await pool.fetchrow(
        "SELECT status, attempts, started_at, current_stage, stages FROM menos.pipeline_job"
    )
    # back to pending it has not started, as after a graceful release
    assert dict(row) == {
        "status": "pending",
        "attempts": 1,
        "started_at": None,
        "current_stage": None,
        "stages": [],
    }
    assert await pool.fetchval("SELECT count(*) FROM menos.callback_outbox") == 0
    assert await pool.fetchval("SELECT result FROM menos.content") is None


async def test_the_rescue_line_names_the_jobs_worker(repo: repository.Repository) -> None:
    """The `job_rescued` log line carries job_id, content_id and worker_id like every line of
    a job, worker_id being the worker whose lease ran out."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    (held,) = await claim(repo, "gone", 1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEASE + 1)
    with structlog.testing.capture_logs() as logs:
        await rescuer.Rescuer(repo, max_attempts=3, interval_s=1).run_once(now=later)
    (line,) = [e for e in logs if e["event"] == "job_rescued"]
    assert line["job_id"] == str(held.job.job_id)
    assert line["content_id"] == str(held.job.content_id)
    assert line["worker_id"] == "gone"


async def test_a_row_the_database_refuses_to_rescue_does_not_keep_the_others(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """When the one-statement rescue is refused because of one row (here an operator's
    trigger), every other expired job is still taken back, and the refused one is named."""
    await helpers.owner(repo)
    for _ in range(3):
        await repo.enqueue(helpers.note())
    held = await claim(repo, "gone", 3)
    poison = held[1].job.job_id
    await pool.execute(
        "CREATE FUNCTION public.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.job_id = '" + str(poison) + "' AND NEW.status <> 'processing'"
        " THEN RAISE EXCEPTION 'not this one'; END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER refuse_one BEFORE UPDATE ON menos.pipeline_job"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse_one()"
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEASE + 1)
    with structlog.testing.capture_logs() as logs:
        taken = await rescuer.Rescuer(repo, max_attempts=3, interval_s=1).run_once(now=later)
    assert taken == 2
    statuses = {
        r["job_id"]: r["status"]
        for r in await pool.fetch("SELECT job_id, status FROM menos.pipeline_job")
    }
    assert statuses == {
        item.job.job_id: "processing" if item.job.job_id == poison else "pending" for item in held
    }
    assert {e["lost_worker_id"] for e in logs if e["event"] == "job_rescued"} == {"gone"}
    (refusal,) = [e for e in logs if e["event"] == "job_rescue_refused"]
    assert refusal["job_id"] == str(poison) and "not this one" in refusal["error"]


async def test_rescuer_fails_job_worker_lost_after_max_attempts(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A job whose worker keeps disappearing ends failed WORKER_LOST in the stage it was in."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    now = dt.datetime.now(dt.UTC)
    for attempt in range(1, 3):
        (held,) = await claim(repo, f"w{attempt}", 1, now=now)
        await repo.heartbeat(
            f"w{attempt}",
            [(repository.Guard(held.job.job_id, f"w{attempt}", attempt), "analyze", [])],
            lease_s=LEASE,
            now=now,
        )
        now += dt.timedelta(seconds=LEASE + 1)
        await repo.rescue_expired(max_attempts=2, now=now)
    row = await pool.fetchrow(
        "SELECT status, error_code, error_stage, error_message, attempts, worker_id"
        " FROM menos.pipeline_job"
    )
    assert dict(row) == {
        "status": "failed",
        "error_code": "WORKER_LOST",
        "error_stage": "analyze",
        "error_message": "the workers running this job were lost 2 times (lease expired)",
        "attempts": 2,
        "worker_id": "w2",  # the last worker that claimed it
    }
    status = await pool.fetchval("SELECT processing_status FROM menos.content")
    assert status == "failed"
    # as for every other failure, the compact record names it too (docs/api.md, data tiers)
    error = await pool.fetchrow(
        "SELECT d ->> 'code' AS code, d ->> 'stage' AS stage, d ->> 'message' AS message"
        " FROM (SELECT diagnostics -> 'error' AS d FROM menos.pipeline_job) AS j"
    )
    assert dict(error) == {
        "code": "WORKER_LOST",
        "stage": "analyze",
        "message": "the workers running this job were lost 2 times (lease expired)",
    }


async def test_rescue_passes_over_a_job_whose_content_row_is_locked(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """An open transaction holding one expired job's content row (psql: `BEGIN; UPDATE
    menos.content … WHERE content_id = …`) does not hold up the rescue of the other expired
    jobs: that one is passed over and taken back by a sweep once the row is free."""
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note())
    now = dt.datetime.now(dt.UTC)
    locked, other = await claim(repo, "gone", 2, now=now)
    later = now + dt.timedelta(seconds=LEASE + 1)
    async with pool.acquire() as operator, operator.transaction():
        await operator.execute(
            "UPDATE menos.content SET title = 'edited' WHERE content_id = $1",
            locked.content.content_id,
        )
        rescued, refused = await asyncio.wait_for(
            repo.rescue_expired(max_attempts=3, now=later), timeout=10
        )
        assert [r.job_id for r in rescued] == [other.job.job_id] and not refused
    rescued, refused = await repo.rescue_expired(max_attempts=3, now=later)
    assert [r.job_id for r in rescued] == [locked.job.job_id] and not refused


async def test_outbox_row_exists_iff_terminal_transition_committed(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A completed job with a callback has exactly one outbox event; a refused write leaves none."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(callback_url="https://example.com/a"))
    await repo.enqueue(helpers.note(callback_url="https://example.com/b"))
    first, second = await claim(repo, "w", 2)
    ok = await repo.complete(
        repository.Guard(first.job.job_id, "w", first.job.attempts),
        result={"summary": "s", "tags": ["x"], "tier": "B", "quality_score": 70},
        tags=["x"],
        stages=[],
        diagnostics={},
        full_payload=None,
    )
    assert ok == "completed"
    refused = await repo.complete(
        repository.Guard(second.job.job_id, "someone-else", second.job.attempts),
        result={"summary": "s"},
        tags=[],
        stages=[],
        diagnostics={},
        full_payload=None,
    )
    assert refused is None
    rows = await pool.fetch("SELECT job_id, event_type, payload FROM menos.callback_outbox")
    assert [(r["job_id"], r["event_type"]) for r in rows] == [(first.job.job_id, "job.completed")]
    payload = rows[0]["payload"]
    assert payload["data"]["result_summary"] == {
        "summary": "s",
        "tags": ["x"],
        "tier": "B",
        "quality_score": 70,
    }
    assert payload["event_id"] and payload["type"] == "job.completed"
    # A transition rolled back with its transaction leaves no event either.
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "UPDATE menos.pipeline_job SET status = 'failed', lease_expires_at = NULL, "
            "finished_at = now() WHERE job_id = $1",
            second.job.job_id,
        )
        assert await conn.fetchval("SELECT count(*) FROM menos.callback_outbox") == 2
        await tx.rollback()
    assert await pool.fetchval("SELECT count(*) FROM menos.callback_outbox") == 1


async def test_graceful_release_does_not_count_an_attempt(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A claim given back on shutdown leaves the job pending with its attempts unchanged."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    (held,) = await claim(repo, "w", 1)
    guard = repository.Guard(held.job.job_id, "w", held.job.attempts)
    assert await repo.release(guard) == "released"
    row = await pool.fetchrow("SELECT status, attempts, worker_id FROM menos.pipeline_job")
    assert dict(row) == {"status": "pending", "attempts": 0, "worker_id": None}


async def test_graceful_release_of_a_job_asked_to_cancel_cancels_it(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A cancel asked while the job ran is carried out when the worker gives the job back,
    instead of the job waiting pending for a worker to claim it just to cancel it."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(callback_url="http://127.0.0.1:9/hook"))
    (held,) = await claim(repo, "w", 1)
    assert (await repo.request_cancel(held.job.job_id, owner="alice")) is not None
    guard = repository.Guard(held.job.job_id, "w", held.job.attempts)
    assert await repo.release(guard) == "cancelled"  # and the worker's summary line says so
    row = await pool.fetchrow(
        "SELECT status, attempts, worker_id, lease_expires_at, finished_at IS NOT NULL AS ended"
        " FROM menos.pipeline_job"
    )
    assert dict(row) == {
        "status": "cancelled",
        "attempts": 1,
        "worker_id": "w",  # an ended job names the worker that last claimed it
        "lease_expires_at": None,
        "ended": True,
    }
    assert await pool.fetchval("SELECT event_type FROM menos.callback_outbox") == "job.cancelled"
    content = await pool.fetchval("SELECT processing_status FROM menos.content")
    assert content == "cancelled"


async def test_a_run_failing_after_a_cancel_was_asked_ends_cancelled(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A cancel asked while a stage runs, and that stage then fails (a fetch timing out):
    the job ends cancelled, as asked, with the error kept in its diagnostics only."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(callback_url="http://127.0.0.1:9/hook"))
    (held,) = await claim(repo, "w", 1)
    assert (await repo.request_cancel(held.job.job_id, owner="alice")) is not None
    written = await repo.fail(
        repository.Guard(held.job.job_id, "w", held.job.attempts),
        code="FETCH_FAILED",
        stage="fetch",
        message="timed out",
        stages=[],
        diagnostics={"error": {"code": "FETCH_FAILED"}},
        full_payload=None,
    )
    assert written == "cancelled"
    row = await pool.fetchrow(
        "SELECT status, error_code, error_stage, error_message, diagnostics FROM menos.pipeline_job"
    )
    assert dict(row) == {
        "status": "cancelled",
        "error_code": None,
        "error_stage": None,
        "error_message": None,
        "diagnostics": {"error": {"code": "FETCH_FAILED"}},
    }
    assert await pool.fetchval("SELECT event_type FROM menos.callback_outbox") == "job.cancelled"


async def test_cancel_pending_is_terminal_and_never_claimed(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Cancelling a pending job ends it at once; no worker ever gets it."""
    await helpers.owner(repo)
    enq = await repo.enqueue(helpers.note())
    assert enq.job_id is not None
    outcome = await repo.request_cancel(enq.job_id, owner="alice")
    assert outcome is not None and (outcome.previous, outcome.status) == ("pending", "cancelled")
    assert await claim(repo, "w", 5) == []
    assert await pool.fetchval("SELECT processing_status FROM menos.content") == "cancelled"
    again = await repo.request_cancel(enq.job_id, owner="alice")
    assert again is not None and again.previous == "cancelled"
    assert await repo.request_cancel(enq.job_id, owner="mallory") is None


async def test_deleting_a_job_forgets_it_as_its_contents_latest(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Any DELETE of a job (not only the purge) leaves its content with no latest job."""
    await helpers.owner(repo)
    first, second = await repo.enqueue_many([helpers.note(), helpers.note()])
    await pool.execute("DELETE FROM menos.pipeline_job WHERE job_id = $1", first.job_id)
    latest = await pool.fetch(
        "SELECT content_id, latest_job_id FROM menos.content ORDER BY content_id"
    )
    assert {r["content_id"]: r["latest_job_id"] for r in latest} == {
        first.content_id: None,
        second.content_id: second.job_id,
    }


async def test_migrations_apply_twice_cleanly(database_url: str) -> None:
    """Running migrations on a migrated database applies nothing and fails nothing."""
    conn = await db.connect(database_url)
    try:
        assert await db.migrate(conn, db.Queries()) == []
        assert await db.pending_migrations(conn, db.Queries()) == []
        versions = await conn.fetch("SELECT version FROM menos.schema_migrations")
        assert [r["version"] for r in versions] == [v for v, _, _ in db.migrations()]
    finally:
        await conn.close()


async def test_migrations_from_empty_database_in_parallel(pg_admin_dsn: str) -> None:
    """Several processes migrating a new database at once end with one clean schema."""
    from tests.support import postgres

    name = await postgres.create_database(pg_admin_dsn)
    dsn = postgres.with_database(pg_admin_dsn, name)
    try:
        conns = [await db.connect(dsn) for _ in range(3)]
        applied = await asyncio.gather(*(db.migrate(c, db.Queries()) for c in conns))
        for c in conns:
            await c.close()
        assert sorted(v for batch in applied for v in batch) == [v for v, _, _ in db.migrations()]
    finally:
        await postgres.drop_database(pg_admin_dsn, name)


async def test_concurrent_completions_of_one_owner_never_deadlock(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Many jobs of one owner completing at once with the same tags in different orders all
    persist (their tag counts are taken in one order, so they queue instead of deadlocking)."""
    await helpers.owner(repo)
    for _ in range(24):
        await repo.enqueue(helpers.note())
    claimed = await claim(repo, "w", 24)
    tags = ["alpha", "beta", "gamma", "delta", "epsilon"]

    async def complete(index: int, held: models.Claimed) -> repository.Persisted:
        order = tags[index % 5 :] + tags[: index % 5]
        order = order if index % 2 else list(reversed(order))
        return await repo.complete(
            repository.Guard(held.job.job_id, "w", held.job.attempts),
            result={"summary": "s", "tags": order},
            tags=order,
            stages=[],
            diagnostics={},
            full_payload=None,
        )

    for _round in range(3):
        done = await asyncio.gather(*(complete(i, c) for i, c in enumerate(claimed)))
        assert done == ["completed"] * len(claimed)
        claimed = []
        for _ in range(24):
            await repo.enqueue(helpers.note())
        claimed = await claim(repo, "w", 24)
    uses = await pool.fetch("SELECT tag, uses FROM menos.owner_tag ORDER BY tag")
    assert {r["tag"]: r["uses"] for r in uses} == dict.fromkeys(tags, 72)


def _run(held: models.Claimed, worker: str, summary: str, tags: list[str]) -> repository.Completion:
    return repository.Completion(
        guard=repository.Guard(held.job.job_id, worker, held.job.attempts),
        result={"summary": summary, "tags": tags},
        tags=tags,
        stages=[],
        diagnostics={},
        full_payload=None,
    )


async def test_a_completion_held_up_by_a_locked_row_does_not_hold_up_the_next_ones(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A worker writes its completions one batch at a time: while an open transaction held
    one job's content row, that job's completion waited, and every completion after it
    waited behind it, also on the owner's tag rows it had locked first. They are now written
    alongside it, and it locks no tag row before its content row; it ends once the row is
    free."""
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note())
    a, b = await claim(repo, "w", 2)
    completions = group_commit.GroupCommit(repo.complete_many, max_batch=4, stall_s=0.2)
    async with pool.acquire() as operator, operator.transaction():
        await operator.execute(
            "SELECT 1 FROM menos.content WHERE content_id = $1 FOR UPDATE", a.content.content_id
        )
        first = asyncio.create_task(completions.submit(_run(a, "w", "a", ["shared"])))
        await asyncio.sleep(0.05)
        later = completions.submit(_run(b, "w", "b", ["shared"]))  # the same tag row
        assert await asyncio.wait_for(later, 10) == "completed"
        assert not first.done()
    assert await asyncio.wait_for(first, 10) == "completed"
    await completions.close()


async def test_a_search_path_naming_a_schema_before_pg_catalog_changes_no_builtin(
    database_url: str, repo: repository.Repository
) -> None:
    """A role or database whose search_path lists another schema before pg_catalog had that
    schema's now() and gen_random_uuid() run in menos's statements: claimed jobs started in
    2000 and every callback event got one id. menos's sessions use PostgreSQL's own."""
    await helpers.owner(repo)
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            "CREATE SCHEMA evil;"
            " CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql"
            " AS $$ SELECT '2000-01-01 00:00:00+00'::timestamptz $$;"
            " CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql"
            " AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $$;"
            f' ALTER DATABASE "{name}" SET search_path = evil, pg_catalog, public'
        )
    finally:
        await admin.close()
    hostile = await db.create_pool(database_url, min_size=0, max_size=2)
    try:
        r = repository.Repository(hostile, db.Queries())
        before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        assert await r.database_now() > before
        for _ in range(2):
            await r.enqueue(helpers.note(callback_url="https://example.com/hook"))
        held = await claim(r, "w1", 2)
        assert [h.job.started_at > before for h in held] == [True, True]
        for h in held:
            guard = repository.Guard(h.job.job_id, "w1", h.job.attempts)
            assert await r.cancel_claimed(guard, stages=[], diagnostics={})
        events = await hostile.fetch("SELECT DISTINCT event_id FROM menos.callback_outbox")
        assert len(events) == 2
    finally:
        await db.close_pool(hostile)


async def test_a_connection_the_server_ends_inside_a_transaction_is_the_database_unavailable(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A transaction (a cancel, an audited action, a submission) whose connection the server
    ended (a shutdown) finds asyncpg's proxy already given back to the pool: dropping the
    connection raised InterfaceError out of the repository, answered 500 instead of 503."""
    await pool.execute(
        "CREATE TABLE public.held (id integer PRIMARY KEY); INSERT INTO public.held VALUES (1)"
    )

    async def waits_on_the_row() -> None:
        async with repo._conn() as conn, conn.transaction():  # as `_audited` does
            await conn.execute("SELECT 1 FROM public.held FOR UPDATE")

    async with pool.acquire() as operator, operator.transaction():
        await operator.execute("SELECT 1 FROM public.held FOR UPDATE")
        victim = asyncio.create_task(waits_on_the_row())
        waiting = None
        while waiting is None:
            await asyncio.sleep(0.02)
            waiting = await pool.fetchval(  # not in a transaction: the view read afresh
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        await pool.execute("SELECT pg_terminate_backend($1)", waiting)  # as a shutdown does
        with pytest.raises(errors.DatabaseUnavailable):
            await asyncio.wait_for(victim, 10)


async def test_a_cancelled_run_whose_content_row_is_held_does_not_hold_up_the_owners_tags(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A batch holding a run whose cancel was asked ended it cancelled, its content row's
    status written by the status trigger at the end of the statement, after the owner's tag
    rows were locked: while an open transaction held that row, every other completion of the
    owner waited for it on those tag rows. The content row is written before any tag row."""
    await helpers.owner(repo)
    for _ in range(3):
        await repo.enqueue(helpers.note())
    a, b, c = await claim(repo, "w", 3)
    await repo.request_cancel(b.job.job_id, owner=None)
    async with pool.acquire() as operator, operator.transaction():
        await operator.execute(
            "SELECT 1 FROM menos.content WHERE content_id = $1 FOR UPDATE", b.content.content_id
        )
        batch = asyncio.create_task(
            repo.complete_many([_run(a, "w", "a", ["shared"]), _run(b, "w", "b", ["shared"])])
        )
        await asyncio.sleep(0.3)
        later = repo.complete_many([_run(c, "w", "c", ["shared"])])  # the same tag row
        assert await asyncio.wait_for(later, 5) == ["completed"]
        assert not batch.done()
    assert await asyncio.wait_for(batch, 10) == ["completed", "cancelled"]
    uses = await pool.fetch("SELECT tag, uses FROM menos.owner_tag")
    assert [(r["tag"], r["uses"]) for r in uses] == [("shared", 2)]
    statuses = await pool.fetch(
        "SELECT j.job_id, j.status, c.processing_status"
        "  FROM menos.pipeline_job j JOIN menos.content c USING (content_id)"
    )
    assert {r["job_id"]: (r["status"], r["processing_status"]) for r in statuses} == {
        a.job.job_id: ("completed", "completed"),
        b.job.job_id: ("cancelled", "cancelled"),
        c.job.job_id: ("completed", "completed"),
    }


async def test_a_claim_returns_each_job_with_its_content(repo: repository.Repository) -> None:
    """One statement hands over the jobs and their content rows, oldest job first."""
    await helpers.owner(repo)
    bodies = [f"# Note {i}\n\nBody {i}." for i in range(3)]
    for body in bodies:
        await repo.enqueue(helpers.note(body=body))
    claimed = await claim(repo, "w", 5)
    assert [c.content.body for c in claimed] == bodies
    assert all(c.content.content_id == c.job.content_id for c in claimed)
    assert all(c.content.processing_status == "pending" for c in claimed)  # as seen at claim


async def test_a_reprocess_counts_only_the_tags_its_item_gains(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """The vocabulary offered to the model is the owner's most used tags: an item run three
    times with the same tags counted them three times, so one reprocessed item outweighed
    two others. A tag counts once per item that gains it."""
    await helpers.owner(repo)
    first = await repo.enqueue(helpers.note())
    runs = [["queues", "postgres"], ["queues", "postgres"], ["queues", "sql"]]
    for tags in runs:
        (held,) = await claim(repo, "w", 1)
        assert await repo.complete_many([_run(held, "w", "s", tags)]) == ["completed"]
        await forced_reprocess(repo, first.content_id)
    (held,) = await claim(repo, "w", 1)  # the last reprocess, with a tag of its first run
    assert await repo.complete_many([_run(held, "w", "s", ["postgres"])]) == ["completed"]
    await repo.enqueue(helpers.note())
    (other,) = await claim(repo, "w", 1)
    assert await repo.complete_many([_run(other, "w", "s", ["other", "sql"])]) == ["completed"]
    uses = await pool.fetch("SELECT tag, uses FROM menos.owner_tag ORDER BY tag")
    assert [(r["tag"], r["uses"]) for r in uses] == [
        ("other", 1),
        ("postgres", 2),  # gained again after a run without it
        ("queues", 1),
        ("sql", 2),
    ]


async def test_completions_persist_together_each_guarded(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A batch of completions writes the held jobs, answers None for a lost one, and counts
    every tag once per job."""
    await helpers.owner(repo)
    for _ in range(3):
        await repo.enqueue(helpers.note(callback_url="https://example.com/hook"))
    a, b, c = await claim(repo, "w", 3)
    answers = await repo.complete_many(
        [_run(a, "w", "a", ["x", "y"]), _run(b, "thief", "b", ["x"]), _run(c, "w", "c", ["x"])]
    )
    assert answers == ["completed", None, "completed"]
    rows = await pool.fetch(
        "SELECT j.job_id, j.status, c.processing_status, c.result ->> 'summary' AS summary"
        "  FROM menos.pipeline_job j JOIN menos.content c USING (content_id)"
    )
    seen = {r["job_id"]: (r["status"], r["processing_status"], r["summary"]) for r in rows}
    assert seen == {
        a.job.job_id: ("completed", "completed", "a"),
        b.job.job_id: ("processing", "processing", None),
        c.job.job_id: ("completed", "completed", "c"),
    }
    uses = await pool.fetch("SELECT tag, uses FROM menos.owner_tag ORDER BY tag")
    assert [(r["tag"], r["uses"]) for r in uses] == [("x", 2), ("y", 1)]
    events = await pool.fetch("SELECT job_id, payload FROM menos.callback_outbox")
    assert {e["job_id"] for e in events} == {a.job.job_id, c.job.job_id}
    assert {e["payload"]["data"]["result_summary"]["summary"] for e in events} == {"a", "c"}


async def test_a_cancel_asked_before_the_completion_ends_the_job_cancelled(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A cancel answered "requested" while the job persists wins over its completion: the
    job ends cancelled with its job.cancelled event, no result and no tag counts, while the
    others of the batch complete."""
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note(callback_url="https://example.com/hook"))
    a, b = await claim(repo, "w", 2)
    asked = await repo.request_cancel(a.job.job_id, owner=None)
    assert asked is not None and asked.status == "processing"
    answers = await repo.complete_many([_run(a, "w", "a", ["x"]), _run(b, "w", "b", ["y"])])
    assert answers == ["cancelled", "completed"]
    rows = await pool.fetch(
        "SELECT j.job_id, j.status, j.current_stage, c.processing_status, c.result"
        "  FROM menos.pipeline_job j JOIN menos.content c USING (content_id)"
    )
    seen = {r["job_id"]: (r["status"], r["processing_status"], r["result"]) for r in rows}
    assert seen[a.job.job_id] == ("cancelled", "cancelled", None)
    assert seen[b.job.job_id][:2] == ("completed", "completed")
    uses = await pool.fetch("SELECT tag FROM menos.owner_tag")
    assert [r["tag"] for r in uses] == ["y"]
    events = await pool.fetch("SELECT job_id, event_type, payload FROM menos.callback_outbox")
    assert {(e["job_id"], e["event_type"]) for e in events} == {
        (a.job.job_id, "job.cancelled"),
        (b.job.job_id, "job.completed"),
    }
    # the cancel after the completion finds the job ended
    late = await repo.request_cancel(b.job.job_id, owner=None)
    assert late is not None and late.status == "completed"


async def test_a_completion_the_database_refuses_fails_alone(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """When one run of a batch cannot be stored (a tag too long for owner_tag's index), the
    others still persist."""
    await helpers.owner(repo)
    for _ in range(3):
        await repo.enqueue(helpers.note())
    a, b, c = await claim(repo, "w", 3)
    unindexable = os.urandom(6000).hex()  # incompressible: over btree's 2 704-byte row limit
    answers = await repo.complete_many(
        [_run(a, "w", "a", []), _run(b, "w", "b", [unindexable]), _run(c, "w", "c", [])]
    )
    assert answers[0] == "completed" and answers[2] == "completed"
    assert isinstance(answers[1], errors.PipelineError) and answers[1].code == "PERSIST_ERROR"
    statuses = await pool.fetch("SELECT job_id, status FROM menos.pipeline_job")
    assert {r["job_id"]: r["status"] for r in statuses} == {
        a.job.job_id: "completed",
        b.job.job_id: "processing",
        c.job.job_id: "completed",
    }


async def test_a_statement_the_server_gave_up_on_is_the_database_unavailable(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A statement waiting for a held row that the server gave up on (an operator's
    pg_cancel_backend, a lock_timeout, a deadlock it broke) came out as the driver's error:
    a lone completion failed its job PERSIST_ERROR for good, a fetched body's write was a
    job_exception, a cancel or reprocess answered 500. It is the database unavailable:
    the job is not ended, the request answers 503."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    (held,) = await claim(repo, "w", 1)

    async def cancelled_while_waiting(write: Any) -> None:
        task = asyncio.ensure_future(write)
        await helpers.cancel_the_lock_waiter(pool)
        with pytest.raises(errors.DatabaseUnavailable):
            await asyncio.wait_for(task, 10)

    async with pool.acquire() as operator, operator.transaction():
        await operator.execute(
            "SELECT 1 FROM menos.content WHERE content_id = $1 FOR UPDATE",
            held.content.content_id,
        )
        await cancelled_while_waiting(repo.complete_many([_run(held, "w", "s", ["x"])]))
        await operator.execute(
            "SELECT 1 FROM menos.pipeline_job WHERE job_id = $1 FOR UPDATE", held.job.job_id
        )
        await cancelled_while_waiting(repo.request_cancel(held.job.job_id, owner=None))
    row = await pool.fetchrow("SELECT status, cancel_requested_at FROM menos.pipeline_job")
    assert (row["status"], row["cancel_requested_at"]) == ("processing", None)


async def test_a_completion_writes_its_content_row_once(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Result and status mirror go in one update of the content row (the trigger skips it)."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(callback_url="https://example.com/hook"))
    (held,) = await claim(repo, "w", 1)
    updates = (
        "SELECT n_tup_upd FROM pg_stat_xact_user_tables"
        " WHERE schemaname = 'menos' AND relname = 'content'"
    )
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval(updates)  # may hold this session's unflushed counts
        rows = await conn.fetch(
            db.Queries()["complete_jobs"],
            [repository.completion_row(_run(held, "w", "s", []))],
            None,
        )
        assert len(rows) == 1
        assert await conn.fetchval(updates) - before == 1
    row = await pool.fetchrow("SELECT processing_status, result FROM menos.content")
    assert (row["processing_status"], row["result"]["summary"]) == ("completed", "s")
    payload = await pool.fetchval("SELECT payload FROM menos.callback_outbox")
    assert payload["data"]["result_summary"]["summary"] == "s"


async def test_claims_and_completions_read_no_table_whole_before_any_analyze(
    database_url: str,
) -> None:
    """On 2,000 submissions never analyzed (a fresh install after a burst), claiming and
    completing find their rows through indexes: no sequential scan of the job or content
    tables, which would cost every claim a read of the whole queue. Heartbeats and a
    deduplicated submission likewise."""
    async with helpers.one_transaction(database_url) as one:
        repo = repository.Repository(one, db.Queries())  # type: ignore[arg-type]
        await helpers.owner(repo)
        await repo.enqueue_many([helpers.note(key=f"url:{i}") for i in range(2000)])
        before = await helpers.sequential_scans(one, QUEUE_TABLES)
        again = await repo.enqueue(helpers.note(key="url:1999"))  # the owner's known resource
        assert again.deduplicated
        for _ in range(3):
            held = await claim(repo, "w", 10, cap=4)
            assert len(held) == 4
            guards = [repository.Guard(h.job.job_id, "w", h.job.attempts) for h in held]
            beats = await repo.heartbeat("w", [(g, "analyze", []) for g in guards], lease_s=LEASE)
            assert len(beats) == 4
            assert all(await repo.complete_many([_run(h, "w", "s", ["t"]) for h in held]))
        assert await helpers.sequential_scans(one, QUEUE_TABLES) == before


async def test_listings_of_everyone_newest_first_read_no_whole_table(database_url: str) -> None:
    """An admin's content listing and an export without --owner read each page from an
    index: each page was a scan and sort of the whole content table, so an export of
    everything took time quadratic in it (177 s for 162,000 items, 4.4 s now)."""
    async with helpers.one_transaction(database_url) as one:
        repo = repository.Repository(one, db.Queries())  # type: ignore[arg-type]
        await helpers.owner(repo)
        await repo.enqueue_many([helpers.note(key=f"url:{i}") for i in range(2000)])
        await one.conn.execute(
            "UPDATE menos.content SET processing_status = 'completed', result = '{}'"
        )
        await one.conn.execute("ANALYZE menos.content")  # as autovacuum would have by now
        before = await helpers.sequential_scans(one, ("content",))
        listed = await helpers.unfiltered_content(repo, owner=None, after=None, limit=50)
        await helpers.unfiltered_content(repo, owner=None, after=listed.last, limit=50)
        exported = await repo.export_page(owner=None, after=None, limit=100)
        await repo.export_page(owner=None, after=exported.last, limit=100)
        assert await helpers.sequential_scans(one, ("content",)) == before


async def test_a_page_of_content_leaves_the_bodies_in_the_database(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A page of 100 items with 1 MiB bodies (which the list never shows) used to read all
    100 MiB into the API for each request; the page now holds no body."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " SELECT gen_random_uuid(), 'alice', 'markdown', 'cid:' || g, '0.1.0', 'completed',"
        " 'T' || g, repeat(md5(g::text), 32768), jsonb_build_object('summary', 's' || g)"
        " FROM generate_series(1, 100) AS g"
    )
    tracemalloc.start()
    try:
        page = await helpers.unfiltered_content(repo, owner="alice", after=None, limit=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(page.items) == 100
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert all(item.body is None for item in page.items)


async def test_a_page_of_jobs_reads_neither_payloads_nor_stage_timings(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A page of jobs read every job's full payload (megabytes each, never shown), and one
    stage timing written by hand without `started_at` made every page holding it fail (500
    over HTTP). The page reads neither."""
    await helpers.owner(repo)
    submitted = await repo.enqueue(helpers.note())
    await pool.execute(
        'UPDATE menos.pipeline_job SET stages = \'[{"name": "fetch"}]\','
        " full_payload = jsonb_build_object('body', repeat('x', 4 * 1024 * 1024))"
        " WHERE job_id = $1",
        submitted.job_id,
    )
    tracemalloc.start()
    try:
        page = await repo.list_jobs(
            owner="alice", status=None, content_id=None, after=None, limit=10
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [job.job_id for job in page.items] == [submitted.job_id]
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert page.items[0].full_payload is None


async def test_a_refused_login_is_an_outage(pg_admin_dsn: str, database_url: str) -> None:
    """When the server refuses a new connection itself (here: the database does not accept
    connections), callers get DatabaseUnavailable (503 over HTTP), not the server's error,
    and the pool connects again once the server lets it."""
    name = database_url.rsplit("/", 1)[1]
    lazy = await db.create_pool(database_url, min_size=0, max_size=2)
    repo = repository.Repository(lazy, db.Queries())
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        with pytest.raises(errors.DatabaseUnavailable, match="not currently accepting"):
            await repo.readiness()
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert (await repo.readiness()).pending_migrations == []
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await lazy.close()


async def test_a_connection_lost_as_it_is_released_is_an_outage(pool: asyncpg.Pool[Any]) -> None:
    """The server going away while a used connection is reset for the pool fails the call as
    DatabaseUnavailable (503 over HTTP), like a loss during the call itself."""

    class LostOnRelease:
        failing = True

        async def acquire(self) -> Any:
            return await pool.acquire()

        async def release(self, conn: Any) -> None:
            await pool.release(conn)
            if self.failing:
                raise asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle")

    lossy = LostOnRelease()
    repo = repository.Repository(cast(Any, lossy), db.Queries())
    with pytest.raises(errors.DatabaseUnavailable, match="closed in the middle"):
        await repo.readiness()
    lossy.failing = False
    assert (await repo.readiness()).pending_migrations == []


async def test_a_pool_on_a_database_that_stopped_answering_still_closes(
    database_url: str,
) -> None:
    """A stopping process closes its pool gracefully, but a database that no longer answers
    (nothing refused, nothing reset) gets its connections dropped after the close timeout
    instead of holding the process up (asyncpg alone waits a minute)."""
    with tcp_proxy.running(database_url) as (proxy, through_proxy):
        through = await db.create_pool(through_proxy, min_size=2, max_size=2)
        assert await through.fetchval("SELECT 1") == 1
        proxy.stall()
        await asyncio.wait_for(db.close_pool(through, timeout_s=0.5), timeout=20)
        assert through.is_closing()


async def test_an_argument_the_client_cannot_encode_is_no_outage(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A lone surrogate cannot be sent as UTF-8 text: the call fails as asyncpg's DataError
    (it would fail the same way again), not as DatabaseUnavailable, and the pool goes on.
    (In a JSON value it is sent as U+FFFD.)"""
    await helpers.owner(repo)
    with pytest.raises(asyncpg.DataError) as caught:
        await repo.list_keys("half a pair: \ud800")
    assert not isinstance(caught.value, errors.DatabaseUnavailable)
    stored = await repo.enqueue(helpers.note(body="half a pair: \ud800"))
    body = await pool.fetchval("SELECT body FROM menos.content")
    assert stored.job_id is not None and body == "half a pair: \ufffd"


async def test_fetched_text_with_nul_characters_is_stored(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A page or transcript may hold NUL characters, which PostgreSQL's text refuses: they
    are stored as U+FFFD instead of failing the job."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(key="url:nul"))
    (held,) = await claim(repo, "w", 1)
    guard = repository.Guard(held.job.job_id, "w", held.job.attempts)
    assert await repo.save_fetched(guard, body="hello\x00world", title="a\x00b", metadata={})
    row = await pool.fetchrow("SELECT body, title FROM menos.content")
    assert dict(row) == {"body": "hello\ufffdworld", "title": "a\ufffdb"}


async def test_a_database_migrated_with_other_migration_files_is_refused(
    pg_admin_dsn: str,
) -> None:
    """A migration recorded under another name, or with other contents, stops `migrate`
    before it applies anything; one recorded before checksums were kept gets its checksum."""
    from tests.support import postgres

    name = await postgres.create_database(pg_admin_dsn)
    conn = await db.connect(postgres.with_database(pg_admin_dsn, name))
    try:
        await db.migrate(conn, db.Queries())
        await conn.execute("UPDATE menos.schema_migrations SET checksum = NULL")
        assert await db.migrate(conn, db.Queries()) == []
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM menos.schema_migrations WHERE checksum IS NULL"
            )
            == 0
        )
        latest = max(v for v, _, _ in db.migrations())
        await conn.execute(
            "UPDATE menos.schema_migrations SET checksum = 'edited' WHERE version = $1", latest
        )
        await conn.execute("DELETE FROM menos.schema_migrations WHERE version = 1")
        await conn.execute("INSERT INTO menos.schema_migrations (version, name) VALUES (1, 'x')")
        with pytest.raises(errors.SchemaMismatch, match=r"migration 1 applied .* is 'x'"):
            await db.migrate(conn, db.Queries())
        await conn.execute("UPDATE menos.schema_migrations SET name = 'core' WHERE version = 1")
        with pytest.raises(errors.SchemaMismatch, match="had other contents"):
            await db.migrate(conn, db.Queries())
    finally:
        await conn.close()
        await postgres.drop_database(pg_admin_dsn, name)


async def test_a_claim_sees_what_committed_while_it_waited_whatever_the_default_isolation(
    pg_admin_dsn: str, database_url: str, repo: repository.Repository
) -> None:
    """On a database whose default_transaction_isolation is repeatable read, a claim that
    waited for another's turn read the queue as it was before: a job cancelled meanwhile
    made it fail with a serialization error, leaving the pending job. It takes that job."""
    await helpers.owner(repo)
    cancelled = await repo.enqueue(helpers.note())
    pending = await repo.enqueue(helpers.note())
    assert cancelled.job_id is not None and pending.job_id is not None
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(
            f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
        )
        strict = await db.create_pool(database_url, min_size=0, max_size=2)
        holder = await db.connect(database_url)
        try:
            await holder.execute("SELECT pg_advisory_lock(hashtext('menos.claim_jobs'))")
            claiming = asyncio.create_task(
                claim(repository.Repository(strict, db.Queries()), "w1", 1)
            )
            waiting = False
            while not waiting:  # the claim has its snapshot and waits for its turn
                await asyncio.sleep(0.02)
                assert not claiming.done(), claiming.result()
                waiting = await holder.fetchval(  # this database's waiter, not another test's
                    "SELECT EXISTS (SELECT 1 FROM pg_locks"
                    " WHERE locktype = 'advisory' AND NOT granted AND database ="
                    " (SELECT oid FROM pg_database WHERE datname = current_database()))"
                )
            assert await repo.request_cancel(cancelled.job_id, owner="alice") is not None
            await holder.execute("SELECT pg_advisory_unlock(hashtext('menos.claim_jobs'))")
            claimed = await claiming
        finally:
            await holder.close()
            await db.close_pool(strict)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_isolation')
        await admin.close()
    assert [held.job.job_id for held in claimed] == [pending.job_id]


async def test_the_schema_check_names_what_it_found(database_url: str) -> None:
    """The check a worker, a dispatcher or a `jobs` command makes at start: a pending
    migration is named; a connection lost meanwhile (the server stopping as the command
    starts) is DatabaseUnavailable, one line, where it escaped as the driver's error."""
    conn = await db.connect(database_url)
    try:
        await db.require_current(conn, db.Queries())
        latest = max(v for v, _, _ in db.migrations())
        await conn.execute("DELETE FROM menos.schema_migrations WHERE version = $1", latest)
        with pytest.raises(errors.SchemaOutdated, match=rf"migrations \[{latest}\] are not"):
            await db.require_current(conn, db.Queries())
        other = await db.connect(database_url)
        try:
            assert await other.fetchval(
                "SELECT pg_terminate_backend($1, 10000)", conn.get_server_pid()
            )
        finally:
            await other.close()
        with pytest.raises(errors.DatabaseUnavailable, match="schema could not be checked: "):
            await db.require_current(conn, db.Queries())
    finally:
        await conn.close()


async def test_a_schema_check_the_server_gives_up_on_is_one_line(database_url: str) -> None:
    """With a role's statement_timeout or lock_timeout, the start of every command and
    service while a session holds menos.schema_migrations (a migration running, a psql
    transaction) was the driver's traceback; it is DatabaseUnavailable, one line."""
    holder = await db.connect(database_url)
    conn = await db.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE menos.schema_migrations IN ACCESS EXCLUSIVE MODE")
            await conn.execute("SET statement_timeout = '100ms'")
            with pytest.raises(errors.DatabaseUnavailable, match="statement timeout"):
                await db.require_current(conn, db.Queries())
            with pytest.raises(errors.DatabaseUnavailable, match="statement timeout"):
                await db.migrate(conn, db.Queries())
            await conn.execute("SET statement_timeout = 0; SET lock_timeout = '100ms'")
            with pytest.raises(errors.DatabaseUnavailable, match="could not be checked: "):
                await db.require_current(conn, db.Queries())
        await db.require_current(conn, db.Queries())
    finally:
        await conn.close()
        await holder.close()


async def test_a_role_that_only_reads_and_writes_rows_starts_on_a_migrated_database(
    pg_admin_dsn: str,
) -> None:
    """`migrate` on a current database changes nothing, so a role without the right to
    change the schema (an application role apart from the owner) can start `bin/api`; with
    migrations pending, it is told what it lacks."""
    from tests.support import postgres

    name = await postgres.create_database(pg_admin_dsn)
    role = f"menos_rows_{name[-12:]}"  # test-only DDL: generated names, never user input
    conn = await db.connect(postgres.with_database(pg_admin_dsn, name))
    try:
        await conn.execute(f"CREATE ROLE {role} NOLOGIN")
        await conn.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC")
        await conn.execute(f'REVOKE CREATE ON DATABASE "{name}" FROM {role}, PUBLIC')
        await db.migrate(conn, db.Queries())
        await conn.execute(f"GRANT USAGE ON SCHEMA menos TO {role}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA menos TO {role}"
        )
        await conn.execute(f"SET ROLE {role}")
        assert await db.migrate(conn, db.Queries()) == []
        await conn.execute("RESET ROLE")
        latest = max(v for v, _, _ in db.migrations())
        await conn.execute("DELETE FROM menos.schema_migrations WHERE version = $1", latest)
        await conn.execute(f"SET ROLE {role}")
        with pytest.raises(errors.MigrationFailed, match="cannot migrate the schema: permission"):
            await db.migrate(conn, db.Queries())
    finally:
        await conn.close()
        await postgres.drop_database(pg_admin_dsn, name)
        admin = await db.connect(pg_admin_dsn)
        try:
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await admin.close()


async def test_listings_are_planned_for_their_own_filters(database_url: str) -> None:
    """After five runs of a cached statement PostgreSQL may keep one generic plan for all
    arguments: one made while an admin listed everyone's content (a scan of the whole
    table) then served every owner's listing on that connection, 2 ms becoming 90 ms at
    200,000 items. Listings are planned for their own arguments."""
    pool = await db.create_pool(database_url, max_size=1)
    try:
        repo = repository.Repository(pool, db.Queries())
        for owner in [None] * 6 + ["alice"]:
            await helpers.unfiltered_content(repo, owner=owner, after=None, limit=10)
            await repo.list_jobs(owner=owner, status=None, content_id=None, after=None, limit=10)
            await repo.export_page(owner=owner, after=None, limit=10)
        generic = await pool.fetchval(
            "SELECT coalesce(sum(generic_plans), 0) FROM pg_prepared_statements"
            " WHERE statement ~ 'FROM menos\\.(content|pipeline_job)\\s+WHERE'"
        )
    finally:
        await pool.close()
    assert generic == 0


@pytest.mark.parametrize(
    ("table", "pending", "named"),
    [
        (
            "pipeline_job",
            (99, "needs_a_lock", "ALTER TABLE menos.pipeline_job ADD COLUMN waited integer"),
            "0099_needs_a_lock.sql",
        ),
        # the runner's own ALTER TABLE of its table, before any migration
        ("schema_migrations", (99, "pending", "SELECT 1"), "menos.schema_migrations"),
    ],
)
async def test_a_migration_blocked_by_a_long_transaction_lets_other_statements_through(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    pending: tuple[int, str, str],
    named: str,
) -> None:
    """A migration waiting for a lock held by an open transaction (a psql session that
    read a menos table) queued every later statement on that table behind it, silently and
    for as long as the transaction stayed open: the API answered 503 to everything (each
    `/ready` reads menos.schema_migrations). It now waits MIGRATION_LOCK_WAIT_S at a time,
    names the sessions in long transactions, and lets the queued statements through between
    tries."""
    real = db.migrations()
    monkeypatch.setattr(db, "migrations", lambda: [*real, pending])
    monkeypatch.setattr(db, "MIGRATION_RETRY_S", 0.5)
    holder, migrating, reader = [await db.connect(database_url) for _ in range(3)]
    read = f"SELECT count(*) FROM menos.{table}"  # test-only: one of the two names above
    try:
        open_transaction = holder.transaction()
        await open_transaction.start()
        await holder.fetchval(read)
        with structlog.testing.capture_logs() as logs:
            running = asyncio.ensure_future(db.migrate(migrating, db.Queries()))
            for _ in range(400):
                waiting = [e for e in logs if e["event"] == "migration_waiting_for_locks"]
                if waiting:
                    break
                await asyncio.sleep(0.05)  # the interval of this poll for the warning
            assert waiting and waiting[0]["migration"] == named
            assert holder.get_server_pid() in [s["pid"] for s in waiting[0]["sessions"]]
            # Behind a migration waiting without end, this read would wait out its own limit.
            await reader.execute("SET lock_timeout = '10s'")
            assert await reader.fetchval(read) is not None
            assert not running.done()
            await open_transaction.rollback()
            assert await asyncio.wait_for(running, timeout=30) == [99]
    finally:
        for conn in (holder, migrating, reader):
            await conn.close()


async def test_a_waiting_migration_names_a_session_of_a_role_it_may_not_read(
    database_url: str,
) -> None:
    """A migration run by the database's owner, not a superuser, waiting for a psql session
    of another role that read a menos table logged `sessions: []`: such a session's
    transaction start is hidden from it. It is named by the lock it holds."""
    role = f"menos_owner_{database_url.rsplit('/', 1)[1][-12:]}"  # test-only generated name
    holder, migrating = [await db.connect(database_url) for _ in range(2)]
    try:
        await migrating.execute(f"CREATE ROLE {role} NOLOGIN")
        await migrating.execute(f"SET ROLE {role}")
        async with holder.transaction():
            await holder.fetchval("SELECT count(*) FROM menos.pipeline_job")
            sessions = await migrating.fetch(db.Queries()["migrations_long_transactions"], 0.0)
        assert holder.get_server_pid() in [s["pid"] for s in sessions]
    finally:
        await migrating.execute("RESET ROLE")
        await migrating.execute(f"DROP ROLE IF EXISTS {role}")
        for conn in (holder, migrating):
            await conn.close()


async def test_a_connection_lost_or_read_only_while_migrating_is_the_database_unavailable(
    pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that ends the session in the middle of a migration (a restart, a failover),
    or a database that refuses writes, stops `migrate` with one DatabaseUnavailable, not
    with the driver's errors."""
    from tests.support import postgres

    monkeypatch.setattr(db, "migrations", lambda: [(1, "slow", "SELECT pg_sleep(30)")])
    name = await postgres.create_database(pg_admin_dsn)
    conn = await db.connect(postgres.with_database(pg_admin_dsn, name))
    admin = await db.connect(pg_admin_dsn)
    try:
        running = asyncio.ensure_future(db.migrate(conn, db.Queries()))
        pid = conn.get_server_pid()
        for _ in range(400):
            if await admin.fetchval(
                "SELECT wait_event = 'PgSleep' FROM pg_stat_activity WHERE pid = $1", pid
            ):
                break
            await asyncio.sleep(0.05)  # the interval of this poll for the migration's sleep
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(errors.DatabaseUnavailable, match="middle of operation"):
            await running
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await conn.close()
        conn = await db.connect(postgres.with_database(pg_admin_dsn, name))
        with pytest.raises(errors.DatabaseUnavailable, match="read-only transaction"):
            await db.migrate(conn, db.Queries())
    finally:
        await admin.close()
        await conn.close()
        await postgres.drop_database(pg_admin_dsn, name)


async def test_a_database_migrated_by_an_earlier_text_of_0004_to_0006_is_healed(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A database migrated before checksums were kept, while 0004 made the status trigger a
    row trigger and 0005 kept the leases index on the status, gets today's objects: a job
    runs to its end again (the row trigger failed on the statement's transition tables)."""
    # What a database migrated by those earlier texts holds (test-only DDL).
    await pool.execute(
        """
        DROP TRIGGER pipeline_job_status ON menos.pipeline_job;
        CREATE TRIGGER pipeline_job_status AFTER UPDATE OF status ON menos.pipeline_job
            FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status)
            EXECUTE FUNCTION menos.on_job_status();
        DROP INDEX menos.pipeline_job_leases;
        CREATE INDEX pipeline_job_leases ON menos.pipeline_job (lease_expires_at)
            WHERE status = 'processing';
        UPDATE menos.schema_migrations SET checksum = NULL WHERE version <= 6;
        DELETE FROM menos.schema_migrations WHERE version = 13;
        """
    )
    async with pool.acquire() as conn:
        assert await db.migrate(conn, db.Queries()) == [13]
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    assert len(await claim(repo, "w", 1)) == 1
    assert await pool.fetchval("SELECT status FROM menos.pipeline_job") == "processing"
    assert "WHERE (lease_expires_at IS NOT NULL)" in await pool.fetchval(
        "SELECT pg_get_indexdef('menos.pipeline_job_leases'::regclass)"
    )


async def test_a_job_cannot_leave_processing_keeping_its_lease(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A hand-made UPDATE that ends a running job but keeps its lease (which the claim would
    count as a running job forever) is refused by the database."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    (held,) = await claim(repo, "w", 1)
    with pytest.raises(asyncpg.CheckViolationError, match="lease_only_while_processing"):
        await pool.execute(
            "UPDATE menos.pipeline_job SET status = 'cancelled', finished_at = now() "
            "WHERE job_id = $1",
            held.job.job_id,
        )
    await pool.execute(
        "UPDATE menos.pipeline_job SET status = 'cancelled', finished_at = now(), "
        "lease_expires_at = NULL WHERE job_id = $1",
        held.job.job_id,
    )
    assert await pool.fetchval("SELECT status FROM menos.pipeline_job") == "cancelled"


async def test_a_job_cannot_enter_processing_without_a_lease(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A hand-made UPDATE that puts a pending job in `processing` without a lease (which no
    worker runs, the rescuer never takes back and a cancel never ends) is refused."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    with pytest.raises(asyncpg.CheckViolationError, match="processing_holds_lease"):
        await pool.execute("UPDATE menos.pipeline_job SET status = 'processing'")
    assert await pool.fetchval("SELECT status FROM menos.pipeline_job") == "pending"
    assert len(await claim(repo, "w", 1)) == 1


async def test_a_job_cannot_end_without_its_finish_time(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A hand-made UPDATE that ends a job without `finished_at` (which no purge would ever
    remove, and the API and its callback would show unfinished) is refused."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    with pytest.raises(asyncpg.CheckViolationError, match="finished_when_finished"):
        await pool.execute("UPDATE menos.pipeline_job SET status = 'cancelled'")
    await pool.execute("UPDATE menos.pipeline_job SET status = 'cancelled', finished_at = now()")
    assert await pool.fetchval("SELECT status FROM menos.pipeline_job") == "cancelled"


async def test_migration_0016_mends_the_rows_hand_made_updates_left(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A job left processing without a lease is taken back (cancelled when a cancel was
    asked), one left finished without a time is stamped; then the checks hold."""
    await helpers.owner(repo)
    stuck, asked, ended = [(await repo.enqueue(helpers.note())).job_id for _ in range(3)]
    migration = _migration(16)
    await pool.execute(
        "ALTER TABLE menos.pipeline_job DROP CONSTRAINT pipeline_job_processing_holds_lease,"
        " DROP CONSTRAINT pipeline_job_finished_when_finished"
    )
    await pool.execute(
        "UPDATE menos.pipeline_job SET status = 'processing', worker_id = 'psql'"
        " WHERE job_id = ANY ($1::uuid[])",
        [stuck, asked],
    )
    await pool.execute(
        "UPDATE menos.pipeline_job SET cancel_requested_at = now() WHERE job_id = $1", asked
    )
    await pool.execute("UPDATE menos.pipeline_job SET status = 'failed' WHERE job_id = $1", ended)
    await pool.execute(migration)
    rows = {
        row["job_id"]: (row["status"], row["worker_id"], row["finished_at"] is not None)
        for row in await pool.fetch(
            "SELECT job_id, status, worker_id, finished_at FROM menos.pipeline_job"
        )
    }
    assert rows == {
        stuck: ("pending", None, False),
        asked: ("cancelled", "psql", True),
        ended: ("failed", None, True),
    }
    assert len(await claim(repo, "w", 1)) == 1


async def test_content_tags_hold_no_null_and_migration_0017_drops_those_left(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A NULL tag or a second dimension written in psql made the item and every content page
    holding it a 500; the database refuses both, and the migration mends what UPDATEs left."""
    await helpers.owner(repo)
    content_id = (await repo.enqueue(helpers.note())).content_id
    other_id = (await repo.enqueue(helpers.note(body="# Other"))).content_id
    add_null = "UPDATE menos.content SET tags = array_append(tags, NULL) WHERE content_id = $1"
    two_dimensions = "UPDATE menos.content SET tags = '{{a,NULL},{c,d}}' WHERE content_id = $1"
    for edit in (add_null, two_dimensions):
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(edit, content_id)
    await pool.execute("ALTER TABLE menos.content DROP CONSTRAINT content_tags_hold_no_null")
    await pool.execute(add_null, content_id)
    await pool.execute(two_dimensions, other_id)
    await pool.execute(_migration(17))
    tags = "SELECT tags FROM menos.content WHERE content_id = $1"
    assert await pool.fetchval(tags, content_id) == list(helpers.note().tags)
    assert await pool.fetchval(tags, other_id) == ["a", "c", "d"]
    page = await helpers.unfiltered_content(repo, owner="alice", after=None, limit=10)
    assert {item.content_id for item in page.items} == {content_id, other_id}


async def test_times_outside_rfc3339_are_refused_and_migration_0018_brings_them_in(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A time past year 9999 or before year 1 written in psql made the job and content views
    and their lists a 500, and a claim taking the job failed after committing, ending it and
    the jobs claimed with it WORKER_LOST; the database refuses such times, infinities too, and
    the migration brings in those UPDATEs left, so the claim and the views read them."""
    await helpers.owner(repo)
    job_id = (await repo.enqueue(helpers.note())).job_id
    other = await repo.enqueue(helpers.note(body="# Other"))
    edits = [
        "UPDATE menos.pipeline_job SET created_at = '10000-01-01'",
        "UPDATE menos.pipeline_job SET cancel_requested_at = '4713-01-01 BC'",
        "UPDATE menos.content SET created_at = 'infinity'",
        "UPDATE menos.content SET processed_at = '-infinity'",
    ]
    for edit in edits:
        with pytest.raises(asyncpg.CheckViolationError, match="times_within_rfc3339"):
            await pool.execute(edit)
    await pool.execute(
        "ALTER TABLE menos.pipeline_job DROP CONSTRAINT pipeline_job_times_within_rfc3339"
    )
    await pool.execute("ALTER TABLE menos.content DROP CONSTRAINT content_times_within_rfc3339")
    await pool.execute(
        "ALTER TABLE menos.owner DROP CONSTRAINT owner_times_within_rfc3339;"
        " ALTER TABLE menos.api_key DROP CONSTRAINT api_key_times_within_rfc3339;"
        " ALTER TABLE menos.callback_outbox DROP CONSTRAINT callback_outbox_times_within_rfc3339"
    )
    await pool.execute(
        "UPDATE menos.pipeline_job SET created_at = '10000-01-01', priority = -1,"
        " cancel_requested_at = '4713-01-01 BC' WHERE job_id = $1",
        job_id,
    )
    await pool.execute(
        "UPDATE menos.content SET created_at = 'infinity', processed_at = '-infinity'"
        " WHERE content_id = $1",
        other.content_id,
    )
    await pool.execute(_migration(18))
    utc = dt.UTC
    job = await repo.job(job_id, owner="alice")
    assert job is not None
    assert job.created_at == dt.datetime.max.replace(tzinfo=utc)
    assert job.cancel_requested_at == dt.datetime.min.replace(tzinfo=utc)
    content = await repo.content(other.content_id, owner="alice")
    assert content is not None and content.created_at == dt.datetime.max.replace(tzinfo=utc)
    assert content.processed_at == dt.datetime.min.replace(tzinfo=utc)
    claimed = await claim(repo, "w", 2)
    assert sorted(c.job.job_id for c in claimed) == sorted([job_id, other.job_id])


async def test_a_pending_job_leaves_room_to_count_its_next_claim_and_0020_makes_it(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A pending job whose attempts were set to the largest integer in psql made every claim
    fail (`integer out of range`), so no job ran; the database refuses that count, and the
    migration lowers one such an UPDATE left, so the claims take it and the others."""
    await helpers.owner(repo)
    full = (await repo.enqueue(helpers.note())).job_id
    other = (await repo.enqueue(helpers.note(body="# Other"))).job_id
    overflow = "UPDATE menos.pipeline_job SET attempts = 2147483647 WHERE job_id = $1"
    with pytest.raises(asyncpg.CheckViolationError, match="pending_attempts_countable"):
        await pool.execute(overflow, full)
    await pool.execute(
        "ALTER TABLE menos.pipeline_job DROP CONSTRAINT pipeline_job_pending_attempts_countable"
    )
    await pool.execute(overflow, full)
    await pool.execute(_migration(20))
    claimed = {c.job.job_id: c.job.attempts for c in await claim(repo, "w", 2)}
    assert claimed == {full: 2147483647, other: 1}


def _migration(version: int) -> str:
    return next(sql for number, _, sql in db.migrations() if number == version)


async def test_clearing_full_payloads_reads_only_jobs_that_have_one(database_url: str) -> None:
    """Among 2,000 old compact-tier jobs, a purge batch of full-tier payloads finds the two
    that have one without walking the others (nor, later, the payloads it cleared)."""
    async with helpers.one_transaction(database_url) as one:
        repo = repository.Repository(one, db.Queries())  # type: ignore[arg-type]
        await helpers.owner(repo)
        await repo.enqueue_many([helpers.note() for _ in range(2000)])
        await one.conn.execute(
            "UPDATE menos.pipeline_job SET status = 'completed', "
            "finished_at = now() - interval '100 days'"
        )
        await one.conn.execute(
            "UPDATE menos.pipeline_job SET full_payload = '{}' WHERE job_id IN "
            "(SELECT job_id FROM menos.pipeline_job ORDER BY job_id LIMIT 2)"
        )
        await one.conn.execute("ANALYZE menos.pipeline_job")
        before = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)

        async def tuples_read() -> int:
            read: int = await one.conn.fetchval(
                "SELECT coalesce(sum(idx_tup_fetch), 0) + coalesce(sum(seq_tup_read), 0) "
                "FROM pg_stat_xact_user_tables WHERE relname = 'pipeline_job'"
            )
            return read

        start = await tuples_read()
        assert await repo.purge_batch("full_payloads", before, 100) == 2
        assert await repo.purge_batch("full_payloads", before, 100) == 0
        assert await tuples_read() - start < 100


async def test_a_purge_deletes_a_full_tier_job_without_first_clearing_its_payload(
    database_url: str,
) -> None:
    """A job past both retentions is deleted with its payload, not first rewritten to clear
    it (a backlog of full-tier jobs took up to three times as long to purge, with up to seven
    times the WAL); the count of full payloads removed stays what `purge --dry-run` shows."""
    async with helpers.one_transaction(database_url) as one:
        repo = repository.Repository(one, db.Queries())  # type: ignore[arg-type]
        await helpers.owner(repo)
        jobs = await repo.enqueue_many([helpers.note() for _ in range(3)])
        now = await repo.database_now()
        await one.conn.execute(
            "UPDATE menos.pipeline_job SET status = 'completed', full_payload = '{}',"
            " finished_at = $1::timestamptz - CASE WHEN job_id = $2 THEN interval '100 days'"
            " ELSE interval '200 days' END",
            now,
            jobs[0].job_id,
        )
        purger = maintenance.Purger(maintenance.PurgeConfig(compact_days=180, full_days=60), repo)

        async def rewritten() -> int:
            updated: int = await one.conn.fetchval(
                "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'pipeline_job'"
            )
            return updated

        preview = await purger.preview(now)
        start = await rewritten()
        purged = await purger.run_once(now)
        assert purged == preview == repository.PurgeCounts(jobs=2, full_payloads=3)
        assert await rewritten() - start == 1  # only the job that stays
        assert await one.conn.fetchval(
            "SELECT full_payload IS NULL FROM menos.pipeline_job WHERE job_id = $1",
            jobs[0].job_id,
        )
        assert await purger.run_once(now) == repository.PurgeCounts()


async def test_folding_processes_never_lowers_a_metric_total(repo: repository.Repository) -> None:
    """Totals are summed exactly: in floating point, (0.1 + 0.2) + 0.3 is more than
    0.1 + (0.2 + 0.3), so folding two processes into the retired row lowered the total,
    which Prometheus reads as a counter reset."""
    for process, value in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        await repo.flush_stats(
            process, [("menos_stage_duration_seconds_sum", "stage=fetch", value)]
        )
    before = await repo.metric_totals()
    assert await repo.retire_stats("b") == 1
    assert await repo.retire_stats("c") == 1
    await repo.flush_stats("a", [("menos_stage_duration_seconds_sum", "stage=fetch", 0.1)])
    assert await repo.metric_totals() == before
    assert [t.value for t in before] == [0.6]


async def test_an_ended_run_keeps_the_last_stage_it_entered(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Completed, failed or cancelled, a job's current_stage is the last stage of its run
    (null when none started), whether or not a heartbeat wrote it before."""
    await helpers.owner(repo)
    for n in range(4):
        await repo.enqueue(helpers.note(body=f"stage {n}"))
    done, failed, cancelled, early = await claim(repo, "w", 4)
    started = dt.datetime.now(dt.UTC)

    def ran(*names: str) -> list[models.StageTiming]:
        return [models.StageTiming(name=n, started_at=started) for n in names]

    def guard(claimed: models.Claimed) -> repository.Guard:
        return repository.Guard(claimed.job.job_id, "w", claimed.job.attempts)

    stages = ("fetch", "prepare", "analyze", "parse", "persist")
    assert (
        await repo.complete(
            guard(done), result={}, tags=[], stages=ran(*stages), diagnostics={}, full_payload=None
        )
        == "completed"
    )
    assert await repo.fail(
        guard(failed),
        code="ANALYZER_FAILED",
        stage="analyze",
        message="no",
        stages=ran("fetch", "prepare", "analyze"),
        diagnostics={},
        full_payload=None,
    )
    assert await repo.cancel_claimed(guard(cancelled), stages=ran("fetch"), diagnostics={})
    assert await repo.cancel_claimed(guard(early), stages=[], diagnostics={})
    rows = await pool.fetch("SELECT job_id, status, current_stage FROM menos.pipeline_job")
    ended = {r["job_id"]: (r["status"], r["current_stage"]) for r in rows}
    assert ended == {
        done.job.job_id: ("completed", "persist"),
        failed.job.job_id: ("failed", "analyze"),
        cancelled.job.job_id: ("cancelled", "fetch"),
        early.job.job_id: ("cancelled", None),
    }


@pytest.mark.parametrize("name", ["alice ", "al ice", "alice\n", "", "x" * 65, "ålice", "a/b"])
async def test_an_owner_name_the_schema_refuses_is_refused_before_the_database_sees_it(
    name: str,
) -> None:
    """The server logs a refused row whole, and the owner's row holds its new webhook secret:
    the name is checked first, and nothing is sent (this pool cannot even be used)."""

    class Unusable:
        def acquire(self, **_: Any) -> Any:
            raise AssertionError("the database was asked")

    repo = repository.Repository(Unusable(), db.Queries())  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidInput) as caught:
        await repo.create_key(name, "user")
    assert caught.value.field == "owner"


async def test_keys_created_at_once_for_a_new_owner_all_show_its_webhook_secret(
    repo: repository.Repository,
) -> None:
    """Every `keys create` for an owner shows the owner's webhook secret, also when several
    create the owner at the same moment (the losers read a snapshot taken before the winner's
    commit, and printed `"webhook_secret": null`)."""
    for round_ in range(10):
        created = await asyncio.gather(*(repo.create_key(f"new{round_}", "user") for _ in range(4)))
        secrets = {key.webhook_secret for key in created}
        assert len(secrets) == 1 and None not in secrets, secrets


@pytest.mark.parametrize("action", ["cancel", "reprocess"])
async def test_an_audited_action_and_its_audit_event_are_one_transaction(
    repo: repository.Repository, pool: asyncpg.Pool[Any], action: str
) -> None:
    """A cancel or reprocess whose audit event cannot be stored does not happen, and logs
    nothing; before, the job was cancelled (a retry then got 409), the trail had no row, and
    the log a line for an event that was never stored."""
    await helpers.owner(repo)
    job = await repo.enqueue(helpers.note())
    assert job.job_id is not None
    await pool.execute(
        "ALTER TABLE menos.audit_event ADD CONSTRAINT refused CHECK (false) NOT VALID"
    )
    actor = repository.Actor(None, {"via": "test"})
    with structlog.testing.capture_logs() as logs, pytest.raises(asyncpg.CheckViolationError):
        if action == "cancel":
            await repo.request_cancel(job.job_id, owner=None, actor=actor)
        else:
            await pool.execute(
                "UPDATE menos.pipeline_job SET status = 'failed', finished_at = now()"
            )
            await repo.reprocess(
                job.content_id,
                owner=None,
                force=False,
                pipeline_version=helpers.VERSION,
                callback_url=None,
                data_tier="compact",
                transcript=None,
                actor=actor,
            )
    assert not [entry for entry in logs if entry["event"].startswith("audit.")]
    assert await pool.fetchval("SELECT count(*) FROM menos.pipeline_job") == 1
    assert await pool.fetchval("SELECT status FROM menos.pipeline_job") in ("pending", "failed")
    await pool.execute("ALTER TABLE menos.audit_event DROP CONSTRAINT refused")
    if action == "cancel":
        done = await repo.request_cancel(job.job_id, owner=None, actor=actor)
        assert done is not None and done.result == "cancelled"
        detail = await pool.fetchval("SELECT detail FROM menos.audit_event")
        assert detail == {"outcome": "cancelled", "previous_status": "pending", "via": "test"}


# A claim holds every worker's claims until it commits (the global cap's lock): nothing one
# client or one row does may hold it.


async def test_a_claimer_that_stops_reading_does_not_hold_the_other_claims(
    repo: repository.Repository, pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """A frozen worker's claim of five 1 MB notes commits although it reads nothing (their
    bodies are not in its result), so another worker's claim is answered at once."""
    await helpers.owner(repo)
    big = [await repo.enqueue(helpers.note(body="x" * 1_000_000)) for _ in range(5)]
    small = await repo.enqueue(helpers.note())
    frozen = await asyncpg.connect(database_url)
    statement = await frozen.prepare(
        "SELECT * FROM menos.claim_jobs('frozen', 5, 100, 30, NULL, 'v', 65536)"
    )
    frozen._transport.pause_reading()  # type: ignore[attr-defined]  # the process stops reading
    claiming = asyncio.create_task(statement.fetch())

    try:
        for _ in range(600):  # until committed, or the server waits to send its result
            if await pool.fetchval(
                "SELECT (SELECT count(*) FROM menos.pipeline_job WHERE worker_id = 'frozen') = 5"
                " OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'ClientWrite'"
                " AND query LIKE '%claim_jobs(''frozen''%')"
            ):
                break
            await asyncio.sleep(0.05)  # the interval of this poll for the claim's state
        else:
            raise AssertionError("the frozen claim neither committed nor started sending")
        held = await asyncio.wait_for(claim(repo, "w", 5), timeout=10)
        assert [h.job.job_id for h in held] == [small.job_id]
    finally:
        frozen._transport.resume_reading()  # type: ignore[attr-defined]
        rows = await claiming
        await frozen.close()
    assert {r["job"]["job_id"] for r in rows} == {e.job_id for e in big}
    assert all(r["content"]["body"] is None and r["body_omitted"] for r in rows)


async def test_bodies_past_a_claims_first_64_kib_come_after_it(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """The claim sends bodies while they add up to 64 KiB; the repository reads the others
    once the claim has committed, so every claimed job has its whole body."""
    await helpers.owner(repo)
    bodies = [f"{i} " + "y" * 30_000 for i in range(3)]  # 30 KB each: the third is past 64 KiB
    for body in bodies:
        await repo.enqueue(helpers.note(body=body))
    async with pool.acquire() as conn:
        peek = conn.transaction()
        await peek.start()
        raw = await conn.fetch(
            "SELECT (content).body IS NULL AS left_out, body_omitted"
            " FROM menos.claim_jobs('peek', 3, 100, 30, NULL, 'v', 65536)"
        )
        await peek.rollback()  # the jobs are pending again
    assert [(r["left_out"], r["body_omitted"]) for r in raw] == [
        (False, False),
        (False, False),
        (True, True),
    ]
    held = await claim(repo, "w", 3)
    assert [h.content.body for h in held] == bodies


@pytest.mark.parametrize(("limit", "cap"), [(1, 1000), (5, 1), (2, 1000)])
async def test_a_job_whose_content_row_is_locked_is_left_for_a_later_claim(
    repo: repository.Repository, pool: asyncpg.Pool[Any], limit: int, cap: int
) -> None:
    """An operator's open transaction on the first job's content row used to hold every
    claim (the status mirror waited for the row): that job is passed over without using up
    the claim's limit (one free slot, or one left under the cap, still gets the next job),
    and it is claimed once the row is free."""
    await helpers.owner(repo)
    first = await repo.enqueue(helpers.note(body="first"))
    second = await repo.enqueue(helpers.note(body="second"))
    async with pool.acquire() as operator, operator.transaction():
        await operator.execute(
            "SELECT 1 FROM menos.content WHERE content_id = $1 FOR UPDATE", first.content_id
        )
        held = await asyncio.wait_for(claim(repo, "w", limit, cap=cap), timeout=10)
        assert [h.job.job_id for h in held] == [second.job_id]
    later = await claim(repo, "w", 2, cap=2)
    assert [h.job.job_id for h in later] == [first.job_id]


async def test_a_claim_sends_no_result_and_the_previous_form_still_sends_whole_bodies(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A run never reads the content's previous result, so the claim does not send it; and
    workers of the previous version, still calling the claim without a byte budget until
    they are restarted, get every body whole, as they expect."""
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note(body="z" * 50_000))
    await pool.execute('UPDATE menos.content SET result = \'{"summary": "old"}\'')
    async with pool.acquire() as conn:
        peek = conn.transaction()
        await peek.start()
        old_form = await conn.fetch(
            "SELECT job, content FROM menos.claim_jobs('old', 2, 100, 30, NULL, 'v')"
        )
        await peek.rollback()
    assert [len(r["content"]["body"]) for r in old_form] == [50_000, 50_000]
    held = await claim(repo, "w", 2)
    assert [len(h.content.body or "") for h in held] == [50_000, 50_000]
    assert [h.content.result for h in held] == [None, None]


class BodiesUnreadable(repository.Repository):
    """A repository whose read of the bodies a claim left out fails (the database went away
    between the two statements)."""

    async def _fetch(self, name: str, *args: Any) -> list[Any]:
        if name == "content_bodies":
            raise errors.DatabaseUnavailable("connection lost")
        return await super()._fetch(name, *args)


async def test_jobs_whose_bodies_cannot_be_read_are_given_back_uncounted(
    pool: asyncpg.Pool[Any],
) -> None:
    """The claim committed, then its bodies could not be read: the jobs are released at
    once, not left processing until their leases run out with an attempt counted."""
    repo = BodiesUnreadable(pool, db.Queries())
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note(body="w" * 50_000))
    with pytest.raises(errors.DatabaseUnavailable):
        await claim(repo, "w", 2)
    rows = await pool.fetch("SELECT status, attempts, worker_id FROM menos.pipeline_job")
    assert [tuple(r) for r in rows] == [("pending", 0, None), ("pending", 0, None)]


async def test_a_finished_job_never_changes_status_again(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """Reopening a finished job by hand is refused by the database: a reprocess makes a new
    job (its callback event exists already, and its rescue would fail on it)."""
    await helpers.owner(repo)
    enqueued = await repo.enqueue(helpers.note())
    (held,) = await claim(repo, "w", 1)
    assert await repo.complete_many([_run(held, "w", "s", [])]) == ["completed"]
    with pytest.raises(asyncpg.CheckViolationError, match="never changes status again"):
        await pool.execute(
            "UPDATE menos.pipeline_job SET status = 'pending', finished_at = NULL"
            " WHERE job_id = $1",
            enqueued.job_id,
        )
    assert (
        await pool.fetchval(
            "SELECT status FROM menos.pipeline_job WHERE job_id = $1", enqueued.job_id
        )
        == "completed"
    )


async def test_a_running_version_that_is_not_dotted_numbers_finds_nothing_stale(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """An installed version such as 0.2.0rc1 cannot be compared part by part: no content is
    older than it (and the query does not fail on it)."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    await pool.execute("UPDATE menos.pipeline_job SET status = 'cancelled', finished_at = now()")
    await pool.execute(  # after the job's end, which the status mirror copies to the content
        "UPDATE menos.content SET processing_status = 'completed', pipeline_version = '0.0.1'"
    )

    async def stale(version: str) -> int:
        found = await repo.classify_candidates(
            owner=None,
            content_type=None,
            status=None,
            stale=True,
            pipeline_version=version,
            after=None,
            limit=10,
        )
        return len(found)

    assert await stale("0.2.0rc1") == 0
    assert await stale("0.2.0") == 1


async def test_the_purge_measures_retention_on_the_database_clock(
    repo: repository.Repository, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database stamps finished_at, audit times and metric samples, so retention counts
    back from its clock: a worker whose clock runs two days fast purges nothing early and
    folds no live process's samples (which would count them twice once it writes again)."""
    await helpers.owner(repo)
    [job] = await repo.enqueue_many([helpers.note()])
    await pool.execute(
        "UPDATE menos.pipeline_job SET status = 'completed', full_payload = '{}',"
        " finished_at = now() - interval '59 days'"
    )
    await pool.execute(
        "INSERT INTO menos.audit_event (event, at) VALUES ('audit.x', now() - interval '59 days')"
    )
    await repo.flush_stats("live", [("menos_callback_deliveries_total", "outcome=delivered", 7)])

    # this process's clock, not the database's
    monkeypatch.setattr(maintenance, "dt", helpers.clock_ahead(dt.timedelta(days=2)))
    purger = maintenance.Purger(maintenance.PurgeConfig(compact_days=60, full_days=60), repo)
    nothing = repository.PurgeCounts()
    assert await purger.preview() == nothing
    assert await purger.run_once() == nothing
    assert await pool.fetchval(
        "SELECT full_payload IS NOT NULL FROM menos.pipeline_job WHERE job_id = $1", job.job_id
    )
    assert await pool.fetchval("SELECT count(*) FROM menos.audit_event") == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM menos.metric_sample WHERE process_id = 'live'")
        == 1
    )


SUPERSEDED_FIXTURES = ROOT / "tests" / "fixtures" / "superseded_migrations"


@pytest.mark.parametrize(
    "superseded",
    [
        "0011_lost_attempts_audited.bee75e5.sql",
        "0012_claims_never_held_by_one_client_or_row.0b026d3.sql",
        "0012_claims_never_held_by_one_client_or_row.270314a.sql",
    ],
)
async def test_a_database_migrated_by_a_superseded_text_is_upgraded(
    pg_admin_dsn: str, superseded: str
) -> None:
    """A database that a build migrated with an earlier text of 0011 or 0012 was refused
    (`had other contents than this code's`) with no way forward. It is migrated, and its
    outbox columns and claim are today's: a claim works."""
    from tests.support import postgres

    version = int(superseded[:4])
    old_sql = (SUPERSEDED_FIXTURES / superseded).read_text()
    queries = db.Queries()
    fresh = await postgres.create_database(pg_admin_dsn)
    upgraded = await postgres.create_database(pg_admin_dsn)
    try:
        conn = await db.connect(postgres.with_database(pg_admin_dsn, upgraded))
        try:
            # as the build did: today's files up to the superseded one, which it applied
            await conn.execute(queries["migrations_table"])
            for number, name, sql in db.migrations():
                if number > version:
                    break
                text = old_sql if number == version else sql
                await conn.execute(text)
                await conn.execute(queries["migrations_record"], number, name, db._checksum(text))
            assert await db.migrate(conn, queries) == [
                number for number, _, _ in db.migrations() if number > version
            ]
            pool = await db.create_pool(postgres.with_database(pg_admin_dsn, upgraded))
            try:
                repo = repository.Repository(pool, queries)
                await helpers.owner(repo)
                await repo.enqueue(helpers.note())
            finally:
                await pool.close()
            claimed = await conn.fetch(
                "SELECT * FROM menos.claim_jobs('w', 1, 10, 30, NULL, 'v', 65536)"
            )
            assert len(claimed) == 1
            shape = (
                "SELECT (SELECT array_agg(attname::text ORDER BY attname) FROM pg_attribute"
                "         WHERE attrelid = 'menos.callback_outbox'::regclass AND attnum > 0"
                "           AND NOT attisdropped),"
                "       pg_get_functiondef('menos.claim_jobs(text, integer, integer,"
                " double precision, timestamptz, text, integer)'::regprocedure)"
            )
            got = await conn.fetchrow(shape)
        finally:
            await conn.close()
        conn = await db.connect(postgres.with_database(pg_admin_dsn, fresh))
        try:
            await db.migrate(conn, queries)
            assert tuple(got) == tuple(await conn.fetchrow(shape))
        finally:
            await conn.close()
    finally:
        for name in (fresh, upgraded):
            await postgres.drop_database(pg_admin_dsn, name)


async def test_a_submission_given_up_on_at_the_deadline_is_never_stored(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """The API answers 503 when the database has not answered a submission by its deadline
    (it stopped answering: frozen, cut off): the client may submit again, so the statement it
    gave up on must not commit when the database wakes up and reads it after all."""
    with tcp_proxy.running(database_url) as (proxy, through_proxy):
        through = await db.create_pool(through_proxy, min_size=1, max_size=1)
        try:
            api = repository.Repository(through, db.Queries(), deadline_s=1.0)
            await helpers.owner(api)
            await api.enqueue(helpers.note())  # its statement is now prepared on the connection
            proxy.stall()
            with pytest.raises(errors.DatabaseUnavailable):
                await api.enqueue(helpers.note(body="given up"))
            proxy.restore()
            # What is awaited is an absence (no late commit), which has no event to wait on:
            # the server gets a second to read and run what the proxy held.
            await asyncio.sleep(1.0)
            assert await pool.fetchval("SELECT count(*) FROM menos.content") == 1
            assert await pool.fetchval("SELECT count(*) FROM menos.pipeline_job") == 1
        finally:
            await db.close_pool(through, timeout_s=0.5)


async def test_heartbeat_renews_other_leases_while_one_job_row_is_locked(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """An operator's open transaction holding one job's row (psql: `BEGIN; UPDATE
    menos.pipeline_job … WHERE job_id = …`) does not hold up the worker's heartbeat: the other
    jobs' leases are renewed, so they are not rescued and failed WORKER_LOST while their
    worker runs them, and the locked one is still held, its lease left as it is."""
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note())
    now = dt.datetime.now(dt.UTC)
    held = await claim(repo, "w", 2, now=now)
    locked, other = (repository.Guard(h.job.job_id, "w", h.job.attempts) for h in held)
    async with pool.acquire() as operator, operator.transaction():
        await operator.execute(
            "UPDATE menos.pipeline_job SET priority = -1 WHERE job_id = $1", locked.job_id
        )
        later = now + dt.timedelta(seconds=LEASE / 2)
        beats = await asyncio.wait_for(
            repo.heartbeat(
                "w", [(locked, "fetch", []), (other, "fetch", [])], lease_s=LEASE, now=later
            ),
            timeout=10,
        )
    assert beats == {
        locked.job_id: repository.Beat(renewed=False, cancel_requested=False),
        other.job_id: repository.Beat(renewed=True, cancel_requested=False),
    }
    leases = dict(
        await pool.fetch("SELECT job_id, lease_expires_at FROM menos.pipeline_job")  # type: ignore[arg-type]
    )
    assert leases[other.job_id] == later + dt.timedelta(seconds=LEASE)
    assert leases[locked.job_id] == now + dt.timedelta(seconds=LEASE)


async def test_a_transcript_supplied_on_reprocess_replaces_what_the_metadata_said_of_the_old(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """The downloaded transcript's language, generation and duration described a body that
    a reprocess with `transcript_text` replaced; its metadata now says `supplied`."""
    await helpers.owner(repo)
    job = await repo.enqueue(helpers.note())

    async def reprocess(transcript: str | None) -> Any:
        """The item's metadata after a forced reprocess (its job ended first)."""
        await pool.execute("UPDATE menos.pipeline_job SET status = 'failed', finished_at = now()")
        await forced_reprocess(repo, job.content_id, transcript)
        return await pool.fetchval("SELECT source_metadata FROM menos.content")

    downloaded = {
        "video_id": "dQw4w9WgXcQ",
        "transcript_source": "youtube",
        "language": "en",
        "transcript_generated": False,
        "duration": 12.0,
    }
    await pool.execute(
        "UPDATE menos.content SET content_type = 'youtube', source_metadata = $1::jsonb",
        downloaded,
    )
    assert await reprocess(None) == downloaded  # a reprocess without one keeps it all
    supplied = await reprocess("A replacement transcript.")
    assert supplied == {"video_id": "dQw4w9WgXcQ", "transcript_source": "supplied"}
    assert await pool.fetchval("SELECT body FROM menos.content") == "A replacement transcript."
    # a note's metadata (its frontmatter) says nothing of transcripts: it is left as it is
    await pool.execute(
        "UPDATE menos.content SET content_type = 'markdown', source_metadata = '{}'::jsonb"
    )
    assert await reprocess("Text.") == {}


async def test_a_full_disk_at_persist_is_the_database_unavailable_not_a_failed_job(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """A result that cannot be written for want of disk space (SQLSTATE 53100) ended its
    job failed with PERSIST_ERROR for good: it is the database unavailable, so the job
    stays processing and its lease gives it back to be run once space is made."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    (held,) = await repo.claim("w1", 1, max_processing=9, lease_s=30, pipeline_version="v")
    await pool.execute(
        "CREATE FUNCTION menos.test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'"
        " USING ERRCODE = 'disk_full'; END $$;"
        " CREATE TRIGGER test_disk_full BEFORE UPDATE ON menos.content"
        " FOR EACH ROW EXECUTE FUNCTION menos.test_disk_full()"
    )
    guard = repository.Guard(held.job.job_id, "w1", held.job.attempts)
    with pytest.raises(errors.DatabaseUnavailable, match="No space left"):
        await repo.complete(guard, result={}, tags=[], stages=[], diagnostics={}, full_payload=None)
    status = await pool.fetchval(
        "SELECT status FROM menos.pipeline_job WHERE job_id = $1", held.job.job_id
    )
    assert status == "processing"


async def test_a_batch_the_server_gave_up_on_is_written_run_by_run(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A batch whose statement the server gave up on while one run waited for a held row
    (an operator's pg_cancel_backend or lock_timeout) is tried again run by run, as a batch
    the database refuses is: the runs that waited for nothing are not lost with it."""
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note())
    a, b = await claim(repo, "w", 2)
    async with pool.acquire() as operator:
        held = operator.transaction()
        await held.start()
        await operator.execute(
            "SELECT 1 FROM menos.content WHERE content_id = $1 FOR UPDATE", a.content.content_id
        )
        task = asyncio.ensure_future(
            repo.complete_many([_run(a, "w", "a", ["x"]), _run(b, "w", "b", ["y"])])
        )
        await helpers.cancel_the_lock_waiter(pool)
        await asyncio.sleep(0.3)
        await held.rollback()
    answers = await asyncio.wait_for(task, 10)
    assert answers[1] == "completed"
    statuses = await pool.fetch("SELECT job_id, status FROM menos.pipeline_job")
    assert {r["job_id"]: r["status"] for r in statuses}[b.job.job_id] == "completed"

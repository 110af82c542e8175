"""A failing job's terminal write, against a real PostgreSQL: it happens whatever the error
holds and however the worker is stopped meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
import structlog.testing

from menos import db, errors, tools
from menos.pipeline import analyzers
from menos.pipeline.analyzers.builtin import BuiltinAnalyzer
from menos.queue import repository
from menos.queue import worker as queue_worker
from tests.integration import helpers
from tests.support import outage, tcp_proxy
from tests.support.pipeline import offline_context


class FailingAnalyzer:
    """An analyzer whose model answers with an error (its text holds a NUL character)."""

    name = "failing"

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        raise errors.PipelineError("LLM_CALL_ERROR", "model said: bad\x00answer\x1b[2J")

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        raise AssertionError("never asked")


class SlowFailRepository(repository.Repository):
    """Records a failed run only after `delay_s`, long enough for a shutdown to end meanwhile."""

    def __init__(self, pool: asyncpg.Pool[Any], delay_s: float) -> None:
        super().__init__(pool, db.Queries())
        self.delay_s = delay_s
        self.failing = asyncio.Event()

    async def fail(self, guard: repository.Guard, **fields: Any) -> bool:
        self.failing.set()
        await asyncio.sleep(self.delay_s)  # the slow write itself
        return await super().fail(guard, **fields)


Build = Callable[[repository.Repository], queue_worker.Worker]


@pytest.fixture
async def build(database_url: str) -> AsyncIterator[Build]:
    """Workers over a given repository whose analyzer always fails."""
    config = helpers.worker_config(
        concurrency=1, max_processing=1, poll_s=0.2, shutdown_grace_s=0.1
    )
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, FailingAnalyzer())
        yield lambda repo: queue_worker.Worker(config, repo, ctx, dsn=database_url)


def one_slot_worker(
    repo: repository.Repository,
    http: httpx.AsyncClient,
    analyzer: analyzers.Analyzer,
    database_url: str,
    **config: Any,
) -> queue_worker.Worker:
    """A worker of one slot (the global cap 1) polling every 0.2 s; `config` overrides."""
    settings = helpers.worker_config(
        **{"concurrency": 1, "max_processing": 1, "poll_s": 0.2} | config
    )
    return queue_worker.Worker(settings, repo, offline_context(http, analyzer), dsn=database_url)


async def job_row(pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT status, attempts, error_code, error_message, diagnostics, worker_id"
        " FROM menos.pipeline_job"
    )
    assert row is not None
    return dict(row)


async def run_until_ended(worker: queue_worker.Worker, pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    """Run `worker` until the job has ended; its row then."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        return await until_failed(pool)
    finally:
        stop.set()
        await running


async def until_failed(pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    for _ in range(200):
        row = await job_row(pool)
        if row["status"] != "pending" and row["status"] != "processing":
            return row
        await asyncio.sleep(0.05)  # the interval of this poll for the job's end
    raise AssertionError(f"the job did not end: {await job_row(pool)}")


async def test_a_nul_in_the_error_is_recorded_not_left_processing(
    pool: asyncpg.Pool[Any], build: Build
) -> None:
    """The model's error text (and so the diagnostics) holds a NUL, which PostgreSQL refuses,
    and a terminal's escape sequence: the job still ends failed, with a space in their place,
    and is never run again."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    row = await run_until_ended(build(repo), pool)
    assert (row["status"], row["attempts"], row["error_code"]) == ("failed", 1, "LLM_CALL_ERROR")
    assert row["error_message"] == "model said: bad answer [2J"
    assert row["diagnostics"]["error"]["message"] == "model said: bad answer [2J"


async def test_a_failed_jobs_summary_line_names_its_error_code(
    pool: asyncpg.Pool[Any], build: Build
) -> None:
    """An operator reading the log learns why a job failed from its one summary line."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    with structlog.testing.capture_logs() as logs:
        row = await run_until_ended(build(repo), pool)
    assert row["error_code"] == "LLM_CALL_ERROR"
    (finished,) = [entry for entry in logs if entry["event"] == "job_finished"]
    assert (finished["outcome"], finished["stage"]) == ("failed", "analyze")
    assert finished["error_code"] == "LLM_CALL_ERROR"


async def test_the_stage_that_failed_has_a_line_with_its_duration(
    pool: asyncpg.Pool[Any], build: Build
) -> None:
    """A log reader sees how long the failing stage ran: one stage line per stage the stage
    histogram counts, the failed one as `stage_failed` with `stage` and `duration_ms`."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    worker = build(repo)
    with structlog.testing.capture_logs() as logs:
        await run_until_ended(worker, pool)
    lines = [e for e in logs if e["event"] in ("stage_finished", "stage_failed")]
    assert [(e["event"], e["stage"]) for e in lines] == [
        ("stage_finished", "fetch"),
        ("stage_finished", "prepare"),
        ("stage_failed", "analyze"),
    ]
    assert isinstance(lines[-1]["duration_ms"], float)
    counted = {
        labels: value
        for name, labels, value in worker.stats.samples()
        if name == "menos_stage_duration_seconds_count"
    }
    assert counted == {"stage=fetch": 1, "stage=prepare": 1, "stage=analyze": 1}
    events = [e["event"] for e in logs]
    assert events.index("stage_failed") < events.index("job_finished")


async def test_a_shutdown_during_the_fail_write_still_records_it(
    pool: asyncpg.Pool[Any], build: Build
) -> None:
    """The grace period ends while the failure is being written: the write completes, so the
    job ends failed instead of staying processing until its lease runs out."""
    repo = SlowFailRepository(pool, delay_s=1.0)
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    worker = build(repo)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(repo.failing.wait(), timeout=10)
    stop.set()  # grace 0.1 s: over long before the 1 s write
    await running
    row = await until_failed(pool)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("failed", 1, "w1")


class GatedAnalyzer:
    """The builtin analyzer, but each call waits for its own gate and names itself as the
    model: run 1 answers "run-1", run 2 "run-2"."""

    name = "gated"

    def __init__(self) -> None:
        self.gates = [asyncio.Event(), asyncio.Event()]
        self.calls = 0
        self.called = asyncio.Condition()

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        self.calls += 1
        run = self.calls
        async with self.called:
            self.called.notify_all()
        await self.gates[run - 1].wait()
        answer = await BuiltinAnalyzer().analyze(request)
        return analyzers.Answer(text=answer.text, model=f"run-{run}")

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        raise AssertionError("never asked")

    async def until_called(self, times: int) -> None:
        async with self.called:
            await asyncio.wait_for(self.called.wait_for(lambda: self.calls >= times), 10)


async def test_a_claim_lost_and_taken_again_by_the_same_worker_runs_once(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """A server crash loses a claim (it commits without waiting for its flush) and the same
    worker claims the job again: both runs hold the same (job, worker, attempts). The older
    run must stop without writing, and its end must not take the newer one off heartbeats."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    analyzer = GatedAnalyzer()
    config = helpers.worker_config(concurrency=2, poll_s=0.2)
    async with httpx.AsyncClient() as http:
        worker = queue_worker.Worker(
            config, repo, offline_context(http, analyzer), dsn=database_url
        )
        assert await worker.run_once() == 1
        older = set(worker._tasks)
        await analyzer.until_called(1)
        # what the crash leaves: the job as it was before the claim
        await pool.execute(
            "UPDATE menos.pipeline_job SET status = 'pending', attempts = 0, worker_id = NULL,"
            " lease_expires_at = NULL, started_at = NULL"
        )
        assert await worker.run_once() == 1
        await analyzer.until_called(2)
        analyzer.gates[0].set()  # the older run reaches persist first
        await asyncio.wait(older)  # and ends
        (job_id,) = list(worker._slots)  # the newer run is still watched by the heartbeat
        assert await pool.fetchval("SELECT status FROM menos.pipeline_job") == "processing"
        analyzer.gates[1].set()
        await worker.drain()
    row = await pool.fetchrow("SELECT status, diagnostics FROM menos.pipeline_job")
    assert row is not None
    assert (row["status"], row["diagnostics"]["model"]) == ("completed", "run-2")
    assert job_id not in worker._slots


class CancelledWhilePersisting(repository.Repository):
    """A cancel lands after the run's last stage boundary, just before its completion."""

    async def complete_many(
        self, runs: Sequence[repository.Completion], *, now: dt.datetime | None = None
    ) -> list[repository.Persisted | errors.PipelineError]:
        for run in runs:
            await self.request_cancel(run.guard.job_id, owner=None)
        return await super().complete_many(runs, now=now)


async def test_a_cancel_during_persist_ends_the_job_cancelled(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """The cancel was answered "requested", so the job ends cancelled, without its result,
    and the worker takes that ending as its own: nothing is written again, nothing lost."""
    repo = CancelledWhilePersisting(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, BuiltinAnalyzer(), database_url)
        with structlog.testing.capture_logs() as logs:
            row = await run_until_ended(worker, pool)
    assert (row["status"], row["attempts"], row["error_code"]) == ("cancelled", 1, None)
    content = await pool.fetchrow("SELECT processing_status, result FROM menos.content")
    assert content is not None
    assert dict(content) == {"processing_status": "cancelled", "result": None}
    finished = [entry for entry in logs if entry["event"] == "job_finished"]
    assert [(e["outcome"], e["stage"]) for e in finished] == [("cancelled", "persist")]
    # bin/reprocess --wait does not count the persist that stored nothing
    job_id = await pool.fetchval("SELECT job_id FROM menos.pipeline_job")
    with structlog.testing.capture_logs() as progress:
        assert await tools.follow(repo, job_id, poll_s=0.01) == tools.EXIT_CANCELLED
    assert progress[-1]["event"] == "job_progress" and progress[-1]["stages_done"] == 4


class ReleaseRefused(repository.Repository):
    """A repository whose release at shutdown does not get written (the database is away)."""

    async def release(self, guard: repository.Guard) -> None:
        raise errors.DatabaseUnavailable("connection refused")


@pytest.mark.parametrize(
    ("repo_class", "cancel", "outcome", "status"),
    [
        (repository.Repository, False, "released", "pending"),
        (repository.Repository, True, "cancelled", "cancelled"),
        (ReleaseRefused, False, "lost", "processing"),
    ],
)
async def test_a_shutdown_logs_released_only_when_the_release_was_written(
    pool: asyncpg.Pool[Any],
    database_url: str,
    repo_class: type[repository.Repository],
    cancel: bool,
    outcome: str,
    status: str,
) -> None:
    """A job still running when the grace ends is given back: `released` when that was
    written (`cancelled` when a cancel was asked meanwhile, as the release then ends it);
    `lost` when it was not, since its lease gives it back with the attempt counted."""
    repo = repo_class(pool, db.Queries())
    await helpers.owner(repo)
    job_id = (await repo.enqueue(helpers.note())).job_id
    analyzer = GatedAnalyzer()  # never opened: the job runs until the grace ends
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, analyzer, database_url, shutdown_grace_s=0.1)
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(worker.run(stop))
            await analyzer.until_called(1)
            if cancel:  # asked while the analyzer runs: no stage boundary comes before the stop
                assert await repo.request_cancel(job_id, owner=None) is not None
            stop.set()
            await running
    finished = [entry for entry in logs if entry["event"] == "job_finished"]
    assert [e["outcome"] for e in finished] == [outcome]
    assert (await job_row(pool))["status"] == status
    # the stages that ran to their end are durations; `analyze`, cut off by the stop, is none
    counted = {
        labels: value for name, labels, value in worker.stats.samples() if name.endswith("_count")
    }
    assert counted == {"stage=fetch": 1, "stage=prepare": 1}


async def test_a_hurried_shutdown_gives_running_jobs_back_without_waiting_the_grace(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """A second stop signal ends the grace at once: the job still running is given back
    (pending, attempt uncounted) instead of being waited for."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    analyzer = GatedAnalyzer()  # never opened: the job would run for the whole grace
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, analyzer, database_url, shutdown_grace_s=3600)
        stop, hurry = asyncio.Event(), asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(worker.run(stop, hurry))
            await analyzer.until_called(1)
            stop.set()
            hurry.set()
            await asyncio.wait_for(running, timeout=60)  # far below the grace of an hour
    finished = [entry for entry in logs if entry["event"] == "job_finished"]
    assert [e["outcome"] for e in finished] == ["released"]
    job = await job_row(pool)
    assert (job["status"], job["attempts"]) == ("pending", 0)


@pytest.mark.parametrize("learned_by", ["notify", "heartbeat"])
async def test_a_cancel_cuts_off_the_model_call_in_flight(
    pool: asyncpg.Pool[Any], database_url: str, learned_by: str
) -> None:
    """A cancel asked while the model is being waited for (a call that could take the whole
    MENOS_LLM_TIMEOUT_S) ends the job cancelled at once, the call abandoned, not at the
    next stage boundary after the answer; so it does when the worker learns of it from its
    heartbeat (a cancel written without its notification)."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    analyzer = GatedAnalyzer()  # never opened: the model never answers
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, analyzer, database_url)
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(worker.run(stop))
            try:
                await analyzer.until_called(1)
                job_id = await pool.fetchval("SELECT job_id FROM menos.pipeline_job")
                if learned_by == "notify":
                    asked = await repo.request_cancel(job_id, owner=None)
                    assert asked is not None and asked.result == "cancel_requested"
                else:
                    await pool.execute(
                        "UPDATE menos.pipeline_job SET cancel_requested_at = now()"
                        " WHERE job_id = $1",
                        job_id,
                    )
                row = await until_failed(pool)
            finally:
                stop.set()
                await running
    assert (row["status"], row["attempts"], row["error_code"]) == ("cancelled", 1, None)
    finished = [entry for entry in logs if entry["event"] == "job_finished"]
    assert [(e["outcome"], e["stage"]) for e in finished] == [("cancelled", "analyze")]
    content = await pool.fetchrow("SELECT processing_status, result FROM menos.content")
    assert content is not None
    assert dict(content) == {"processing_status": "cancelled", "result": None}
    # The stage cut off is not done: bin/reprocess --wait counts the two before it.
    job = await repo.job(job_id, owner=None)
    assert job is not None and job.current_stage == "analyze"
    assert [(s.name, s.finished_at is None) for s in job.stages] == [
        ("fetch", False),
        ("prepare", False),
        ("analyze", True),
    ]
    with structlog.testing.capture_logs() as progress:
        assert await tools.follow(repo, job_id, poll_s=0.01) == tools.EXIT_CANCELLED
    assert progress[-1]["stages_done"] == 2


class GatedCompletion(repository.Repository):
    """A completion held before (or after) its write, until the test opens the gate."""

    def __init__(self, pool: asyncpg.Pool[Any], *, write_first: bool) -> None:
        super().__init__(pool, db.Queries())
        self.write_first = write_first
        self.persisting, self.gate = asyncio.Event(), asyncio.Event()

    async def complete_many(
        self, runs: Sequence[repository.Completion], *, now: dt.datetime | None = None
    ) -> list[repository.Persisted | errors.PipelineError]:
        if self.write_first:
            answers = await super().complete_many(runs, now=now)
        self.persisting.set()
        await self.gate.wait()
        return answers if self.write_first else await super().complete_many(runs, now=now)


@pytest.mark.parametrize("write_first", [False, True])
async def test_a_hurried_shutdown_during_persist_waits_for_the_completion(
    pool: asyncpg.Pool[Any], database_url: str, write_first: bool
) -> None:
    """A completion once submitted is written even when a second stop signal cuts the run
    off. The job used to be released meanwhile: its run thrown away when the release came
    first, or, when the completion did, the job completed but logged `lost`."""
    repo = GatedCompletion(pool, write_first=write_first)
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, BuiltinAnalyzer(), database_url, shutdown_grace_s=3600)
        stop, hurry = asyncio.Event(), asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(worker.run(stop, hurry))
            await asyncio.wait_for(repo.persisting.wait(), timeout=30)
            stop.set()
            hurry.set()
            await asyncio.sleep(0.5)  # the run is cut off; a release would be written now
            repo.gate.set()
            await asyncio.wait_for(running, timeout=30)
    finished = [entry for entry in logs if entry["event"] == "job_finished"]
    assert [(e["outcome"], e["stage"]) for e in finished] == [("completed", "persist")]
    job = await job_row(pool)
    assert (job["status"], job["attempts"]) == ("completed", 1)


class FailRefused(repository.Repository):
    """A repository whose record of a failed run does not get written."""

    refusal: Exception = errors.DatabaseUnavailable("connection refused")
    refused = asyncio.Event()

    async def fail(self, guard: repository.Guard, **fields: Any) -> bool:
        self.refused.set()
        raise self.refusal


@pytest.mark.parametrize(
    "refusal", [errors.DatabaseUnavailable("connection refused"), RuntimeError("refused")]
)
async def test_a_failure_that_was_not_recorded_is_logged_lost(
    pool: asyncpg.Pool[Any], build: Build, refusal: Exception
) -> None:
    """The job is still processing and runs again once its lease runs out, so its summary
    line says `lost`, not `failed` (which made two `failed` lines for one job)."""
    repo = FailRefused(pool, db.Queries())
    repo.refusal, repo.refused = refusal, asyncio.Event()
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    worker = build(repo)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(worker.run(stop))
        await repo.refused.wait()
        stop.set()
        await running
    finished = [entry for entry in logs if entry["event"] == "job_finished"]
    assert [e["outcome"] for e in finished] == ["lost"]
    assert (await job_row(pool))["status"] == "processing"


class Panic(BaseException):
    """What pyo3 raises for a Rust panic in an extension: a BaseException, not an Exception."""


class PanickingAnalyzer:
    """An analyzer whose extension panics."""

    name = "panicking"

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        raise Panic("called `Result::unwrap()` on an `Err` value")

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        raise AssertionError("never asked")


@pytest.mark.parametrize("analyzer", [PanickingAnalyzer(), BuiltinAnalyzer()])
async def test_a_panic_in_the_analyzer_fails_the_job_not_leaves_it_processing(
    pool: asyncpg.Pool[Any], database_url: str, analyzer: analyzers.Analyzer
) -> None:
    """A note of "a'a'a'…" made the keyword extractor panic: the job stayed processing until
    its lease ran out, ran again, and ended WORKER_LOST. It now ends at once, completed by
    the builtin analyzer and PIPELINE_EXCEPTION for a panic no stage handles."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await repo.enqueue(helpers.note(body="a'" * 1_000))
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, analyzer, database_url)
        row = await run_until_ended(worker, pool)
    assert row["attempts"] == 1
    if isinstance(analyzer, BuiltinAnalyzer):
        assert (row["status"], row["error_code"]) == ("completed", None)
    else:
        assert (row["status"], row["error_code"]) == ("failed", "PIPELINE_EXCEPTION")
        assert "Panic" in row["error_message"]


async def test_a_worker_backs_off_during_an_outage_and_claims_once_the_database_is_back(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """While the database is down the worker tries (and logs) less and less often, not once
    per poll; once it is back, waiting work is claimed without waiting out the backoff."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    with tcp_proxy.running(database_url) as (proxy, through):
        lossy = await db.create_pool(through, min_size=0, max_size=3)
        config = helpers.worker_config(concurrency=1, max_processing=1, poll_s=0.05)
        async with httpx.AsyncClient() as http:
            ctx = offline_context(http, BuiltinAnalyzer())
            worker = queue_worker.Worker(
                config, repository.Repository(lossy, db.Queries()), ctx, dsn=through
            )
            proxy.cut()
            stop = asyncio.Event()
            with structlog.testing.capture_logs() as logs:
                running = asyncio.create_task(worker.run(stop))
                await outage.backed_off(logs, "claim_database_unavailable")
                proxy.restore()
                await repo.enqueue(helpers.note())
                try:
                    row = await until_failed(pool)  # any end: here the job completes
                finally:
                    stop.set()
                    await running
                    await lossy.close()
    assert row["status"] == "completed"
    assert [e["after_failures"] for e in logs if e["event"] == "claim_database_available"] == [
        len([e for e in logs if e["event"] == "claim_database_unavailable"])
    ]
    assert any(e["event"] == "listen_restored" for e in logs)


async def rename_functions(pool: asyncpg.Pool[Any], name: str, to: str) -> None:
    """Rename every function `menos.<name>`, whatever its arguments."""
    await pool.execute(f"""
        DO $$
        DECLARE f regprocedure;
        BEGIN
            FOR f IN SELECT oid FROM pg_proc
                      WHERE proname = '{name}' AND pronamespace = 'menos'::regnamespace LOOP
                EXECUTE format('ALTER FUNCTION %s RENAME TO {to}', f);
            END LOOP;
        END $$""")


async def test_a_claim_that_keeps_failing_backs_off_and_claims_once_it_works_again(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """A worker whose claim no longer fits the schema (a previous version's, on a migrated
    database) logged the error with its traceback at every poll and every NOTIFY; it now tries
    less and less often, and claims once the claim works again."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    await rename_functions(pool, "claim_jobs", "claim_jobs_of_another_version")
    async with httpx.AsyncClient() as http:
        worker = one_slot_worker(repo, http, BuiltinAnalyzer(), database_url, poll_s=0.05)
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(worker.run(stop))
            try:
                async with outage.notifying(pool, queue_worker.CHANNEL_JOBS):
                    await outage.backed_off(logs, "claim_failed")
                await rename_functions(pool, "claim_jobs_of_another_version", "claim_jobs")
                await repo.enqueue(helpers.note())
                row = await until_failed(pool)  # any end: here the job completes
            finally:
                stop.set()
                await running
    assert row["status"] == "completed"
    failed = [e for e in logs if e["event"] == "claim_failed"]
    assert {e["log_level"] for e in failed} == {"error"}
    assert all(isinstance(e["exc_info"], asyncpg.UndefinedFunctionError) for e in failed)
    assert [e["after_failures"] for e in logs if e["event"] == "claim_recovered"] == [len(failed)]


class HeldAnalyzer:
    """The builtin analyzer, once `release` is set: its n-th call 0.2 n seconds later."""

    name = "held"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        self.calls += 1
        order = self.calls
        await self.release.wait()
        await asyncio.sleep(0.2 * order)  # the jobs end one by one
        return await BuiltinAnalyzer().analyze(request)

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        raise AssertionError("never asked")


async def test_jobs_ending_during_an_outage_do_not_hurry_the_claim_backoff(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """Each job that ended while the database was away woke the claim loop, which claimed
    (and logged a failure) at once: four jobs took the backoff from its first wait to its
    cap in milliseconds. The loop now waits out the backoff, or for the database's return."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    for n in range(4):
        await repo.enqueue(helpers.note(body=f"note {n} about queues"))
    analyzer = HeldAnalyzer()
    with tcp_proxy.running(database_url) as (proxy, through):
        lossy = await db.create_pool(through, min_size=0, max_size=6)
        config = helpers.worker_config(concurrency=4, max_processing=4, poll_s=2.0)
        async with httpx.AsyncClient() as http:
            worker = queue_worker.Worker(
                config,
                repository.Repository(lossy, db.Queries()),
                offline_context(http, analyzer),
                dsn=through,
            )
            stop = asyncio.Event()
            with structlog.testing.capture_logs() as logs:
                running = asyncio.create_task(worker.run(stop))
                try:
                    for _ in range(200):
                        if analyzer.calls == 4:
                            break
                        await asyncio.sleep(0.02)
                    assert analyzer.calls == 4
                    proxy.cut()
                    analyzer.release.set()  # the four jobs end, unable to persist
                    await asyncio.sleep(1.2)  # every job has ended; the first wait has not passed
                finally:
                    stop.set()
                    await running
                    await lossy.close()
    failures = [e["retry_in_s"] for e in logs if e["event"] == "claim_database_unavailable"]
    assert failures in ([], [2.0]), failures


async def test_a_listen_connection_restored_while_a_claim_waits_wakes_the_worker(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """The LISTEN connection comes back while a claim still waits on a connection that then
    fails: the database was seen back, so waiting work is claimed at once, not after the
    backoff."""
    repo = repository.Repository(pool, db.Queries())
    await helpers.owner(repo)
    with (
        tcp_proxy.running(database_url) as (claims, through_claims),
        tcp_proxy.running(database_url) as (listens, through_listens),
    ):
        lossy = await db.create_pool(through_claims, min_size=0, max_size=3)
        config = helpers.worker_config(concurrency=1, max_processing=1, poll_s=3.0)
        watched = repository.Repository(lossy, db.Queries())
        claiming = asyncio.Event()
        claim = watched.claim

        async def claim_watched(*args: Any, **kwargs: Any) -> Any:
            claiming.set()
            return await claim(*args, **kwargs)

        watched.claim = claim_watched  # type: ignore[method-assign]
        async with httpx.AsyncClient() as http:
            worker = queue_worker.Worker(
                config, watched, offline_context(http, BuiltinAnalyzer()), dsn=through_listens
            )
            stop = asyncio.Event()
            with structlog.testing.capture_logs() as logs:
                running = asyncio.create_task(worker.run(stop))
                try:
                    await until_logged(logs, "worker_started")
                    await asyncio.sleep(0.5)  # its first claim found nothing; LISTEN is up
                    claims.stall()
                    listens.cut()
                    await repo.enqueue(helpers.note())  # its NOTIFY reaches no one
                    claiming.clear()
                    await asyncio.wait_for(claiming.wait(), 10)  # the next poll's claim waits
                    listens.restore()
                    await until_logged(logs, "listen_restored")
                    claims.cut()  # the waiting claim fails ...
                    claims.restore()  # ... and the database is back at once
                    back = asyncio.get_running_loop().time()
                    row = await until_failed(pool)  # any end: here the job completes
                    took = asyncio.get_running_loop().time() - back
                finally:
                    stop.set()
                    await running
                    await lossy.close()
    assert row["status"] == "completed"
    assert took < 1.5, took


async def until_logged(logs: list[Any], event: str) -> None:
    """Return once `event` is logged; fail after 10 s."""
    for _ in range(500):
        if any(e["event"] == event for e in logs):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{event} never logged")

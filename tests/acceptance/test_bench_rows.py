"""The benchmark's finished jobs are rows menos reads, as a worker would have written them."""

from __future__ import annotations

from bench import menos_driver
from menos import db, versions
from menos.queue import repository


async def test_the_scale_sections_finished_jobs_read_as_jobs(database_url: str) -> None:
    """Its stage timings lacked `started_at`: one such row made the job listing answer 500
    (the listing no longer reads stages; a job's own view does)."""
    pool = await db.create_pool(database_url, max_size=2)
    try:
        repo = repository.Repository(pool, db.Queries())
        await repo.create_key(menos_driver.OWNER, "user")
        await pool.execute(
            menos_driver.bench_queries()["bench_fill_finished"],
            5,
            menos_driver.OWNER,
            menos_driver.NOTE,
            versions.app_version(),
        )
        page = await repo.list_jobs(
            owner=None, status="completed", content_id=None, after=None, limit=10
        )
        jobs = [await repo.job(listed.job_id, owner=None) for listed in page.items]
    finally:
        await db.close_pool(pool)
    assert len(jobs) == 5
    assert all(job is not None and job.stages[0].duration_ms == 1.0 for job in jobs)

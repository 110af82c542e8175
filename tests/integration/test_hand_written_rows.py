"""Jobs whose rows were edited by hand in psql stay readable through the API's views."""

from __future__ import annotations

from typing import Any

import asyncpg

from menos.http import schemas
from menos.queue import repository
from tests.integration import helpers


async def test_a_stage_timing_written_by_hand_does_not_make_the_job_unreadable(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A job whose `stages` holds a timing without `started_at` (or not a list at all) was a
    500 on GET /api/v1/jobs/{id}, minimal view included; the job reads, the good timings kept."""
    await helpers.owner(repo)
    submitted = await repo.enqueue(helpers.note())
    assert submitted.job_id is not None
    cases: list[tuple[str, list[str]]] = [
        (
            '[{"name": "fetch"}, {"name": "prepare", "started_at": "2026-01-01T00:00:00Z"}]',
            ["prepare"],
        ),
        ('{"name": "fetch"}', []),
        ('[{"name": "fetch", "started_at": "2026-01-01"}]', []),
    ]
    for stages, kept in cases:
        await pool.execute(
            "UPDATE menos.pipeline_job SET stages = $2::text::jsonb WHERE job_id = $1",
            submitted.job_id,
            stages,
        )
        job = await repo.job(submitted.job_id, owner="alice")
        assert job is not None
        assert schemas.job_view(job).job_id == submitted.job_id
        verbose = schemas.job_verbose_view(job, None)
        assert [stage.name for stage in verbose.stages] == kept


async def test_diagnostics_written_by_hand_as_no_object_do_not_make_the_job_unreadable(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """`diagnostics` set to JSON null (the column is NOT NULL, its JSON need not be an object)
    or a full payload that is a list made the job view a 500; they read as empty."""
    await helpers.owner(repo)
    submitted = await repo.enqueue(helpers.note())
    assert submitted.job_id is not None
    await pool.execute(
        "UPDATE menos.pipeline_job SET diagnostics = 'null', full_payload = '[1]',"
        " data_tier = 'full' WHERE job_id = $1",
        submitted.job_id,
    )
    job = await repo.job(submitted.job_id, owner="alice")
    assert job is not None
    verbose = schemas.job_verbose_view(job, None)
    assert verbose.diagnostics == {}
    assert verbose.full_payload is None


async def test_rows_written_by_hand_as_no_object_are_claimed_and_read_with_the_others(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """A pending job whose `diagnostics` (or its content's `source_metadata`) was set by hand to
    JSON that is no object made every claim taking it fail after committing: the job and the
    ones claimed with it stayed processing until their leases ran out, and ended WORKER_LOST;
    the content view and the listing of that owner's content were a 500. They read as empty."""
    await helpers.owner(repo)
    first = await repo.enqueue(helpers.note())
    second = await repo.enqueue(helpers.note())
    await pool.execute(
        "UPDATE menos.pipeline_job SET diagnostics = 'null' WHERE job_id = $1", first.job_id
    )
    await pool.execute(
        "UPDATE menos.content SET source_metadata = '[]', result = '[1]' WHERE content_id = $1",
        first.content_id,
    )
    claimed = await repo.claim(
        "w1", 2, max_processing=2, lease_s=30.0, pipeline_version=helpers.VERSION
    )
    assert sorted(c.job.job_id for c in claimed) == sorted([first.job_id, second.job_id])
    assert [c.content.source_metadata for c in claimed if c.job.job_id == first.job_id] == [{}]
    content = await repo.content(first.content_id, owner="alice")
    assert content is not None and content.source_metadata == {} and content.result is None
    page = await helpers.unfiltered_content(repo, owner="alice", after=None, limit=10)
    assert len(page.items) == 2

"""The worker's memory of which tags an owner used, against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time
import types
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
import httpx
import pytest

from menos import db, errors
from menos.pipeline import stages
from menos.pipeline.analyzers import builtin
from menos.queue import repository
from menos.queue import worker as queue_worker
from tests.integration import helpers
from tests.support.pipeline import offline_context

WORKER_ID = "w1"


class CountingRepository(repository.Repository):
    """Records every tag lookup; refuses the next `refusals` persists as lost jobs."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        super().__init__(pool, db.Queries())
        self.reads: list[list[str]] = []
        self.refusals = 0

    async def known_tags(self, owner: str, tags: Iterable[str]) -> set[str]:
        asked = list(tags)
        self.reads.append(sorted(asked))
        return await super().known_tags(owner, asked)

    async def complete_many(
        self, runs: Sequence[repository.Completion], *, now: dt.datetime | None = None
    ) -> list[repository.Persisted | errors.PipelineError]:
        if self.refusals:
            self.refusals -= 1
            return [None] * len(runs)
        return await super().complete_many(runs, now=now)


@pytest.fixture
async def runner(pool: asyncpg.Pool[Any]) -> AsyncIterator[queue_worker.Worker]:
    """A worker that is never started: its tag memory and its slots are used directly."""
    config = helpers.worker_config(worker_id=WORKER_ID)
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, builtin.BuiltinAnalyzer())
        yield queue_worker.Worker(config, CountingRepository(pool), ctx, dsn="unused")


def reads(runner: queue_worker.Worker) -> list[list[str]]:
    assert isinstance(runner.repo, CountingRepository)
    return runner.repo.reads


async def test_only_tags_not_known_to_be_used_are_read(runner: queue_worker.Worker) -> None:
    """A tag the database said was used is not read again; one not known to be used is read
    every time (another worker may use it any moment); owners are kept apart."""
    repo = runner.repo
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    (held,) = await repo.claim("w2", 1, max_processing=9, lease_s=30, pipeline_version="v")
    guard = repository.Guard(held.job.job_id, "w2", held.job.attempts)
    assert (
        await repo.complete(
            guard, result={}, tags=["x"], stages=[], diagnostics={}, full_payload=None
        )
        == "completed"
    )
    assert await runner.known_tags("alice", ["x", "y"]) == {"x"}
    assert await runner.known_tags("alice", ["y", "x"]) == {"x"}
    assert await runner.known_tags("bob", ["x"]) == set()
    assert reads(runner) == [["x", "y"], ["y"], ["x"]]


async def test_tags_are_learned_only_from_a_persist_that_committed(
    runner: queue_worker.Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A persist the guard refused teaches nothing; a committed one makes its tags known
    without a read, until the memory is older than KNOWN_TAGS_TTL_S."""
    repo = runner.repo
    assert isinstance(repo, CountingRepository)
    await helpers.owner(repo)
    for _ in range(2):
        await repo.enqueue(helpers.note())
    lost, kept = await repo.claim(
        WORKER_ID, 2, max_processing=9, lease_s=30, pipeline_version=helpers.VERSION
    )
    repo.refusals = 1
    with pytest.raises(stages.Lost):
        await queue_worker._Slot(runner, lost, runner.ctx).persist({"tags": ["z"]}, ["z"])
    assert await runner.known_tags("alice", ["z"]) == set()
    assert repo.reads == [["z"]]

    await queue_worker._Slot(runner, kept, runner.ctx).persist({"tags": ["z"]}, ["z"])
    assert await runner.known_tags("alice", ["z"]) == {"z"}
    assert repo.reads == [["z"]]  # learned from the committed persist: no read

    later = time.monotonic() + queue_worker.KNOWN_TAGS_TTL_S + 1
    monkeypatch.setattr(queue_worker, "time", types.SimpleNamespace(monotonic=lambda: later))
    assert await runner.known_tags("alice", ["z"]) == {"z"}
    assert repo.reads == [["z"], ["z"]]  # forgotten, so read again (and used, says the database)

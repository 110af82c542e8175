"""menos side of the benchmarks: no-op jobs through menos's own repository (claim, complete)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import Any

from bench.peers import protocol
from menos import db, errors, versions
from menos.queue import group_commit, models, repository, worker

BENCH_SQL = Path(__file__).resolve().parent / "sql"
OWNER = models.Owner("bench")
NOTE = "# A note\n\nShort text for a no-op job.\n"
POOL_MAX = 7  # a bin/worker's pool with the default 4 slots (concurrency + 3)
MAX_PROCESSING = 100_000  # the global cap is not what the queue-core benchmark measures
LEASE_S = 60.0
POLL_S = 2.0  # MENOS_WORKER_POLL_S default
MAX_CLAIMS = 10_000_000  # bounds the drain loop; a drain ends long before


@functools.cache
def version() -> str:
    """menos's version, read once per process as a worker's config does."""
    return versions.app_version()


def bench_queries() -> db.Queries:
    """The benchmark's own named queries (bench/sql)."""
    return db.Queries(BENCH_SQL)


async def claim(repo: repository.Repository, worker_id: str, n: int) -> list[models.Claimed]:
    """menos's claim: `menos.claim_jobs` plus the content rows of the claimed jobs."""
    return await repo.claim(
        worker_id,
        n,
        max_processing=MAX_PROCESSING,
        lease_s=LEASE_S,
        pipeline_version=version(),
    )


Completions = group_commit.GroupCommit[
    repository.Completion, repository.Persisted | errors.PipelineError
]


def completions(repo: repository.Repository, slots: int) -> Completions:
    """A Worker's completion path: jobs finishing together persist in one transaction."""
    return group_commit.GroupCommit(
        repo.complete_many, max_batch=slots, stall_s=worker.COMPLETION_STALL_S
    )


async def complete(group: Completions, worker_id: str, item: models.Claimed) -> None:
    """menos's persist step with an empty result, through the worker's group commit."""
    job = item.job
    await group.submit(
        repository.Completion(
            guard=repository.Guard(job.job_id, worker_id, job.attempts),
            result={"summary": "", "tags": []},
            tags=[],
            stages=[],
            diagnostics={},
            full_payload=None,
        )
    )


def new_note(seq: int) -> models.NewContent:
    return models.NewContent(
        owner=OWNER,
        content_type="markdown",
        resource_key=None,
        source_url=None,
        title=str(seq),
        tags=[],
        body=NOTE,
        source_metadata={},
        callback_url=None,
        data_tier="compact",
        pipeline_version=version(),
    )


async def enqueue(repo: repository.Repository, seqs: list[int]) -> None:
    """One `enqueue` per job, or `enqueue_many` (one statement) for a batch."""
    if len(seqs) == 1:
        await repo.enqueue(new_note(seqs[0]))
    else:
        await repo.enqueue_many([new_note(seq) for seq in seqs])


async def drain(repo: repository.Repository, worker_id: str, batch: int) -> dict[str, int]:
    """Claim `batch`, complete the jobs concurrently, repeat until a claim finds nothing."""
    group = completions(repo, batch)
    jobs = claims = 0
    for _ in range(MAX_CLAIMS):
        claimed = await claim(repo, worker_id, batch)
        claims += 1
        if not claimed:
            break
        await asyncio.gather(*(complete(group, worker_id, item) for item in claimed))
        jobs += len(claimed)
    return {"jobs": jobs, "claims": claims}


async def consume(
    repo: repository.Repository, dsn: str, worker_id: str, slots: int, record: protocol.Recorder
) -> dict[str, int]:
    """menos's Worker loop shape: LISTEN, claim into free slots, wake on NOTIFY or job end."""
    stop = asyncio.Event()
    wake = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    listener = await db.connect(dsn)
    await listener.add_listener("menos_jobs", lambda *_: wake.set())
    running: set[asyncio.Task[None]] = set()
    group = completions(repo, slots)
    jobs = 0

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        wake.set()

    while not stop.is_set():
        wake.clear()
        free = slots - len(running)
        claimed = await claim(repo, worker_id, free) if free > 0 else []
        for item in claimed:
            record.mark(int(item.content.title or "0"))
            task = asyncio.create_task(complete(group, worker_id, item))
            running.add(task)
            task.add_done_callback(finished)
        jobs += len(claimed)
        if claimed and len(running) < slots:
            continue
        waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiters, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    await listener.close()
    return {"jobs": jobs}


async def main() -> None:
    args = protocol.parser(__doc__ or "").parse_args()
    version()
    record = protocol.Recorder(args.record)
    pool = await db.create_pool(args.dsn, min_size=1, max_size=POOL_MAX)
    repo = repository.Repository(pool, db.Queries())
    try:
        if args.mode == "install":
            conn = await db.connect(args.dsn)
            try:
                await db.migrate(conn, db.Queries())
            finally:
                await conn.close()
            with contextlib.suppress(Exception):  # the owner may exist already
                await repo.create_key(OWNER, "user")
        elif args.mode == "fill":
            async with pool.acquire() as conn:
                await conn.execute(
                    bench_queries()["bench_fill_pending"],
                    args.jobs,
                    OWNER,
                    NOTE,
                    None,
                    versions.app_version(),
                    "",
                )
        elif args.mode == "enqueue":
            await protocol.timed_enqueue(functools.partial(enqueue, repo), args.jobs, args.batch)
        elif args.mode == "drain":
            await protocol.wait_go()
            protocol.emit(**await drain(repo, args.worker_id, args.batch))
        elif args.mode == "consume":
            protocol.emit(**await consume(repo, args.dsn, args.worker_id, args.batch, record))
        elif args.mode == "pace":

            async def one(seq: int) -> Any:
                return await repo.enqueue(new_note(seq))

            protocol.emit(jobs=await protocol.pace(one, args.rate, args.seconds, record))
    finally:
        record.close()
        await pool.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

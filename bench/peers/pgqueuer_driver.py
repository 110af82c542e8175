"""pgqueuer side of the benchmarks: no-op jobs through pgqueuer's own QueueManager."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from datetime import timedelta

import asyncpg
import protocol
from pgqueuer import AsyncpgDriver, QueueManager
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

ENTRYPOINT = "noop"


async def enqueue(queries: Queries, seqs: list[int]) -> None:
    """One enqueue call: scalar arguments for one job, lists for a batch (one statement)."""
    if len(seqs) == 1:
        await queries.enqueue(ENTRYPOINT, str(seqs[0]).encode())
        return
    await queries.enqueue(
        [ENTRYPOINT] * len(seqs), [str(s).encode() for s in seqs], [0] * len(seqs)
    )


async def run_manager(dsn: str, batch: int, record: protocol.Recorder, *, drain: bool) -> int:
    """pgqueuer's own QueueManager with a no-op entrypoint; `batch` is its dequeue batch_size."""
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    done = 0

    @qm.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        nonlocal done
        record.mark(int(job.payload or b"0"))
        done += 1

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    if drain:
        await protocol.wait_go()
    await qm.run(
        batch_size=batch,
        mode=QueueExecutionMode.drain if drain else QueueExecutionMode.continuous,
        dequeue_timeout=timedelta(seconds=30),
    )
    await conn.close()
    return done


async def main() -> None:
    args = protocol.parser(__doc__ or "").parse_args()
    logging.basicConfig(level=logging.WARNING)
    record = protocol.Recorder(args.record)
    if args.mode in ("drain", "consume"):
        jobs = await run_manager(args.dsn, args.batch, record, drain=args.mode == "drain")
        protocol.emit(jobs=jobs)
        record.close()
        return
    conn = await asyncpg.connect(args.dsn)
    queries = Queries(AsyncpgDriver(conn))
    try:
        if args.mode == "install":
            await queries.install()
        elif args.mode == "fill":
            for start in range(0, args.jobs, 1000):
                await enqueue(queries, list(range(start, min(start + 1000, args.jobs))))
        elif args.mode == "enqueue":
            await protocol.timed_enqueue(functools.partial(enqueue, queries), args.jobs, args.batch)
        elif args.mode == "pace":
            total = await protocol.pace(
                lambda seq: enqueue(queries, [seq]), args.rate, args.seconds, record
            )
            protocol.emit(jobs=total)
    finally:
        record.close()
        await conn.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

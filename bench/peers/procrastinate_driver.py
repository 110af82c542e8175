"""procrastinate side of the benchmarks: no-op jobs through procrastinate's own App and worker."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from typing import Any

import procrastinate
import protocol

POOL_MAX = 7  # like a menos worker's pool (concurrency + 3)


def make_app(dsn: str, record: protocol.Recorder) -> tuple[procrastinate.App, Any, list[int]]:
    """procrastinate's App on a psycopg pool with one no-op task, and its done-counter."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=POOL_MAX)
    )
    done = [0]

    @app.task(name="noop")
    async def noop(seq: int = 0) -> None:
        record.mark(seq)
        done[0] += 1

    return app, noop, done


async def enqueue(task: Any, seqs: list[int]) -> None:
    """One enqueue call: `defer_async` for one job, `batch_defer_async` for a batch."""
    if len(seqs) == 1:
        await task.defer_async(seq=seqs[0])
        return
    await task.batch_defer_async(*({"seq": s} for s in seqs))


async def main() -> None:
    args = protocol.parser(__doc__ or "").parse_args()
    logging.basicConfig(level=logging.WARNING)
    record = protocol.Recorder(args.record)
    app, task, done = make_app(args.dsn, record)
    async with app.open_async():
        try:
            if args.mode == "install":
                await app.schema_manager.apply_schema_async()
            elif args.mode == "fill":
                for start in range(0, args.jobs, 1000):
                    await enqueue(task, list(range(start, min(start + 1000, args.jobs))))
            elif args.mode == "enqueue":
                await protocol.timed_enqueue(
                    functools.partial(enqueue, task), args.jobs, args.batch
                )
            elif args.mode == "pace":
                total = await protocol.pace(
                    lambda seq: enqueue(task, [seq]), args.rate, args.seconds, record
                )
                protocol.emit(jobs=total)
            else:
                drain = args.mode == "drain"
                if drain:
                    await protocol.wait_go()
                # procrastinate fetches one job per statement; `batch` is how many run at once.
                worker = asyncio.create_task(
                    app.run_worker_async(
                        concurrency=args.batch,
                        wait=not drain,
                        listen_notify=True,
                        install_signal_handlers=False,
                        delete_jobs="never",
                    )
                )
                stop = asyncio.Event()
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not worker.done():
                    worker.cancel()
                    await asyncio.gather(worker, return_exceptions=True)
                stopper.cancel()
                protocol.emit(jobs=done[0])
        finally:
            record.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

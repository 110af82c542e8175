"""The line protocol every benchmark driver speaks with bench/run.py (stdlib only)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

GO_TIMEOUT_S = 120.0
_cpu_at_go: list[float] = []  # the process's CPU time when `go` came, once it has


def emit(**fields: Any) -> None:
    """One JSON line on stdout: `ready`, then the driver's result.

    A result emitted after `go` carries `cpu_s`: this process's CPU seconds since `go`.
    """
    if _cpu_at_go and "ready" not in fields:
        fields["cpu_s"] = round(time.process_time() - _cpu_at_go[0], 4)
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def wait_go() -> None:
    """Announce readiness and block until the orchestrator writes `go` on stdin."""
    emit(ready=True)
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), GO_TIMEOUT_S)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")
    _cpu_at_go[:] = [time.process_time()]


class Recorder:
    """Appends `seq wall_time` lines (one per job start or enqueue commit) to a file."""

    def __init__(self, path: str | None) -> None:
        self._file: TextIO | None = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def mark(self, seq: int) -> None:
        if self._file is not None:
            self._file.write(f"{seq} {time.time():.6f}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def parser(description: str) -> argparse.ArgumentParser:
    """The common command line: `MODE --dsn DSN [--jobs N] [--batch B] ...`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "mode",
        choices=["install", "fill", "enqueue", "drain", "consume", "pace"],
        help="what to do",
    )
    p.add_argument("--dsn", required=True)
    p.add_argument("--jobs", type=int, default=0, help="jobs to fill or enqueue")
    p.add_argument("--batch", type=int, default=1, help="jobs per claim or per enqueue call")
    p.add_argument("--rate", type=float, default=50.0, help="pace: jobs per second")
    p.add_argument("--seconds", type=float, default=10.0, help="pace: how long")
    p.add_argument("--record", help="consume/pace: file receiving `seq wall_time` lines")
    p.add_argument("--worker-id", default="bench-worker")
    return p


async def timed_enqueue(enqueue: Any, jobs: int, batch: int) -> None:
    """Enqueue `jobs` in calls of `batch`, timed from `go`; emits the result.

    One untimed call of the same shape comes first (its jobs numbered after the timed ones),
    so that preparing statements and loading types is not counted as enqueue time: a
    long-running producer has done that once, long before.
    """
    await enqueue(list(range(jobs, jobs + batch)))
    await wait_go()
    began = time.perf_counter()
    for start in range(0, jobs, batch):
        await enqueue(list(range(start, min(start + batch, jobs))))
    emit(jobs=jobs, seconds=time.perf_counter() - began)


async def pace(enqueue_one: Any, rate: float, seconds: float, record: Recorder) -> int:
    """Enqueue one job every 1/rate s on a fixed schedule; records each commit time."""
    total = int(rate * seconds)
    start = time.monotonic()
    for seq in range(total):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await enqueue_one(seq)
        record.mark(seq)
    return total

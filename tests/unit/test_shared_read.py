"""The database read behind /metrics and /ready: shared, bounded, and honest about faults."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from menos import errors
from menos.http import shared_read
from menos.queue import repository

REPO = cast(repository.Repository, object())


class Reads:
    """A stand-in read that counts its calls and ends when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.outcome: Any = 7

    async def __call__(self, repo: repository.Repository) -> int:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return int(self.outcome)


async def test_callers_that_come_while_a_read_runs_share_it() -> None:
    reads = Reads()
    read = shared_read.SharedRead(reads, timeout_s=5)
    waiting = [asyncio.create_task(read.result(REPO)) for _ in range(5)]
    await asyncio.sleep(0.01)
    reads.release.set()
    assert await asyncio.gather(*waiting) == [7] * 5
    assert reads.calls == 1
    assert await read.result(REPO) == 7  # a read that ended is not reused
    assert reads.calls == 2


async def test_a_read_that_does_not_end_in_time_is_an_outage_and_keeps_running() -> None:
    reads = Reads()
    read = shared_read.SharedRead(reads, timeout_s=0.05)
    with pytest.raises(errors.DatabaseUnavailable, match=r"no answer within 0\.05 s"):
        await read.result(REPO)
    with pytest.raises(errors.DatabaseUnavailable):
        await read.result(REPO)
    assert reads.calls == 1  # the second caller waited on the same read
    reads.release.set()
    assert await read.result(REPO) == 7
    await read.close()


@pytest.mark.parametrize(
    "fault", [errors.DatabaseUnavailable("connection refused"), RuntimeError("a bug")]
)
async def test_a_failed_read_raises_its_own_error(fault: Exception) -> None:
    reads = Reads()
    reads.outcome = fault
    reads.release.set()
    read = shared_read.SharedRead(reads, timeout_s=5)
    with pytest.raises(type(fault)) as raised:
        await read.result(REPO)
    assert raised.value is fault


async def test_close_stops_a_running_read() -> None:
    reads = Reads()
    read = shared_read.SharedRead(reads, timeout_s=0.01)
    with pytest.raises(errors.DatabaseUnavailable):
        await read.result(REPO)
    await read.close()
    assert reads.calls == 1
    reads.release.set()
    assert await read.result(REPO) == 7  # a new read after the cancelled one
    assert reads.calls == 2

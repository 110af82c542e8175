"""The finished jobs /metrics reports: a whole-table count, taken again only once it is
cheap enough to, and the last one served meanwhile."""

from __future__ import annotations

import asyncio
from typing import cast

from menos import errors
from menos.http import metrics
from menos.queue import repository


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counts:
    """A stand-in repository whose count takes `duration_s` of the clock, or waits for
    `release` when it is cleared, and answers how many counts it has made."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.duration_s = 0.5
        self.release = asyncio.Event()
        self.release.set()
        self.fault: Exception | None = None

    async def finished_status_counts(self) -> list[repository.StatusCount]:
        self.calls += 1
        await self.release.wait()
        self.clock.now += self.duration_s
        if self.fault is not None:
            raise self.fault
        return [repository.StatusCount("completed", self.calls, None)]


def setup(timeout_s: float = 5.0) -> tuple[Clock, Counts, metrics.FinishedCounts]:
    clock = Clock()
    return clock, Counts(clock), metrics.FinishedCounts(clock=clock, timeout_s=timeout_s)


def jobs(counted: list[repository.StatusCount] | None) -> int | None:
    return None if counted is None else counted[0].jobs


async def test_a_count_is_taken_again_only_after_twenty_times_its_duration() -> None:
    clock, counts, finished = setup()
    repo = cast(repository.Repository, counts)
    assert jobs(await finished.latest(repo)) == 1
    clock.now += 9.9  # the count took 0.5 s: the next one is due 10 s after it ended
    assert jobs(await finished.latest(repo)) == 1
    assert counts.calls == 1
    clock.now += 0.1
    assert jobs(await finished.latest(repo)) == 2
    counts.duration_s = 0.001  # a small table: counted again at almost every scrape
    clock.now += 10.0
    assert jobs(await finished.latest(repo)) == 3
    clock.now += 0.02
    assert jobs(await finished.latest(repo)) == 4


async def test_a_count_that_does_not_answer_in_time_leaves_the_last_one_standing() -> None:
    clock, counts, finished = setup(timeout_s=0.05)
    repo = cast(repository.Repository, counts)
    counts.release.clear()
    assert await finished.latest(repo) is None  # nothing counted yet
    assert await finished.latest(repo) is None  # waits on the same count
    assert counts.calls == 1
    counts.release.set()
    assert jobs(await finished.latest(repo)) == 1  # the count that ended late, not a new one
    assert counts.calls == 1
    clock.now += 100.0
    counts.release.clear()
    assert jobs(await finished.latest(repo)) == 1
    counts.release.set()
    assert jobs(await finished.latest(repo)) == 2
    await finished.close()


async def test_a_count_that_fails_is_spaced_out_too_and_the_last_one_stands() -> None:
    """A count the server gives up on (the API's statement timeout, on a table too large to
    count in time) is not started again at every scrape."""
    clock, counts, finished = setup()
    repo = cast(repository.Repository, counts)
    assert jobs(await finished.latest(repo)) == 1
    clock.now += 100.0
    counts.fault = errors.DatabaseUnavailable("canceling statement due to statement timeout")
    counts.duration_s = 9.0
    assert jobs(await finished.latest(repo)) == 1
    counts.fault = None
    clock.now += 179.0
    assert jobs(await finished.latest(repo)) == 1
    assert counts.calls == 2
    clock.now += 1.0
    assert jobs(await finished.latest(repo)) == 3


async def test_a_count_the_database_did_not_answer_does_not_hold_back_the_next_one() -> None:
    """A count that got no answer before the API's 10 s deadline (the database frozen or out
    of reach) on a table that counts in 1 ms: the next scrape, with the database back, counts
    again rather than serving the count from before the outage for 200 s."""
    clock, counts, finished = setup()
    repo = cast(repository.Repository, counts)
    counts.duration_s = 0.001
    assert jobs(await finished.latest(repo)) == 1
    clock.now += 15.0
    fault = errors.DatabaseUnavailable("no answer within 10.0 s")
    fault.__cause__ = TimeoutError()  # as the repository raises it at its deadline
    counts.fault = fault
    counts.duration_s = 10.0
    assert jobs(await finished.latest(repo)) == 1  # the last count stands meanwhile
    counts.fault = None
    counts.duration_s = 0.001
    clock.now += 15.0  # the next scrape: the database answers again
    assert jobs(await finished.latest(repo)) == 3

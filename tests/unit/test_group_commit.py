"""Group commit: what is written together, and what each submitter is told."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from menos.queue.group_commit import GroupCommit


class Recorder:
    """A write function that records its batches; a write can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: int | None = None
        self.writing = asyncio.Event()  # set when a write has begun

    async def write(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.writing.set()
        await self.gate.wait()
        if self.fail_on in items:
            raise ValueError(f"refused {self.fail_on}")
        return [item * 10 for item in items]


async def test_items_submitted_in_one_turn_are_written_together() -> None:
    rec = Recorder()
    group = GroupCommit(rec.write, max_batch=10)
    answers = await asyncio.gather(*(group.submit(i) for i in range(5)))
    assert answers == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]


async def test_items_submitted_during_a_write_go_in_the_next_one() -> None:
    rec = Recorder()
    group = GroupCommit(rec.write, max_batch=10)
    rec.gate.clear()
    first = asyncio.create_task(group.submit(1))
    await rec.writing.wait()  # the first write is in flight, held by the gate
    later = [asyncio.create_task(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.wait(later, timeout=0)  # they start and queue behind it
    assert rec.batches == [[1]]
    rec.gate.set()
    assert await first == 10
    assert [await task for task in later] == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]


async def test_batches_never_exceed_max_batch() -> None:
    rec = Recorder()
    group = GroupCommit(rec.write, max_batch=3)
    await asyncio.gather(*(group.submit(i) for i in range(7)))
    assert rec.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_failed_write_fails_its_batch_only() -> None:
    rec = Recorder()
    group = GroupCommit(rec.write, max_batch=2)
    rec.fail_on = 1
    results = await asyncio.gather(*(group.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r).__name__ for r in results[:2]] == ["ValueError", "ValueError"]
    assert results[2:] == [20, 30]
    assert await group.submit(9) == 90  # and the group keeps working


async def test_a_cancelled_submitter_is_still_written_and_close_waits_for_it() -> None:
    rec = Recorder()
    group = GroupCommit(rec.write, max_batch=10)
    rec.gate.clear()
    task = asyncio.create_task(group.submit(5))
    await rec.writing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closing = asyncio.create_task(group.close())
    await asyncio.wait([closing], timeout=0)
    assert not closing.done()
    rec.gate.set()
    await closing
    assert rec.batches == [[5]]


async def test_a_wrong_number_of_answers_fails_the_batch() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[:-1]

    group = GroupCommit(short, max_batch=10)
    results = await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_cancel_drops_what_is_not_written_and_cancels_its_submitters() -> None:
    rec = Recorder()
    group = GroupCommit(rec.write, max_batch=10)
    rec.gate.clear()
    first = asyncio.create_task(group.submit(1))
    await rec.writing.wait()
    second = asyncio.create_task(group.submit(2))
    await asyncio.wait([second], timeout=0)  # it starts and queues behind the first write
    await group.cancel()
    for task in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rec.batches == [[1]]  # 2 was never written
    rec.gate.set()
    assert await group.submit(3) == 30  # and a new item starts a new writer


async def test_a_write_held_past_stall_s_no_longer_holds_up_the_items_after_it() -> None:
    """A write waiting on a row another transaction holds: the items submitted meanwhile are
    written alongside it once it has been in flight for `stall_s`, and close waits for both."""
    release, writing = asyncio.Event(), asyncio.Event()
    batches: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        writing.set()
        if 1 in items:
            await release.wait()
        return [item * 10 for item in items]

    group = GroupCommit(write, max_batch=10, stall_s=0.05)
    first = asyncio.create_task(group.submit(1))
    await writing.wait()
    assert await asyncio.wait_for(asyncio.gather(group.submit(2), group.submit(3)), 5) == [20, 30]
    assert not first.done()
    closing = asyncio.create_task(group.close())
    await asyncio.wait([closing], timeout=0.05)
    assert not closing.done()
    release.set()
    await closing
    assert await first == 10
    assert batches == [[1], [2, 3]]


async def test_cancel_also_cancels_a_held_write() -> None:
    never = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int]:
        await never.wait()
        return list(items)

    group = GroupCommit(write, max_batch=10, stall_s=0.01)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0.05)  # past stall_s: the writer has let go of it
    await group.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.parametrize("turns", range(1, 6))
async def test_cancel_answers_every_submitter_whenever_it_comes(turns: int) -> None:
    """A writer or a batch's write cancelled before its first step never ran its clean-up:
    its submitters waited for ever, and no later item was written."""

    async def write(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(10)
        return list(items)

    group = GroupCommit(write, max_batch=10, stall_s=0.5)
    first = asyncio.create_task(group.submit(1))
    for _ in range(turns):
        await asyncio.sleep(0)
    await group.cancel()
    await asyncio.wait([first], timeout=1)
    assert first.cancelled()

"""Group commit: writes submitted while one is in flight go to the database together."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class GroupCommit(Generic[In, Out]):
    """Batches items for a write function that takes many and answers for each, in order.

    An item submitted while nothing is being written waits one turn of the event loop (so
    the items submitted in the same turn join it) and is written at once; items submitted
    during a write are written together when it ends, up to `max_batch` at a time. There is
    no timer: a lone item never waits, and under load batches grow by themselves.

    With `stall_s`, a write still in flight after that long (waiting on a row another
    transaction holds) stops holding up the items after it: they are written alongside it.
    """

    def __init__(
        self,
        write: Callable[[Sequence[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch: int,
        stall_s: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._write = write
        self._max_batch = max_batch
        self._stall_s = stall_s
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()  # batches being written
        self._unanswered: set[asyncio.Future[Out]] = set()  # submitted, not yet answered

    async def submit(self, item: In) -> Out:
        """Write `item` with whatever else is waiting; its answer, or the write's exception.

        Cancelling the caller does not withdraw the item: it is written all the same.
        """
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait until every submitted item is written."""
        while self._writer is not None or self._writes:
            running = [*self._writes, *([self._writer] if self._writer else [])]
            await asyncio.shield(asyncio.gather(*running, return_exceptions=True))

    async def cancel(self) -> None:
        """Stop writing: every item not yet written is dropped and its submitter cancelled."""
        running = [*self._writes, *([self._writer] if self._writer else [])]
        unanswered = [*self._unanswered]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # A task cancelled before its first step never runs its own clean-up: the batch it
        # was given (or the queue) would be left unanswered, its submitters waiting for ever.
        for future in unanswered:
            future.cancel()
        if self._writer in running:
            self._writer = None
            self._queue = [(item, future) for item, future in self._queue if not future.done()]

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                write = asyncio.create_task(self._write_batch(batch), name="group-commit-write")
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)
                await asyncio.wait([write], timeout=self._stall_s)
        finally:
            self._writer = None
            for _, future in self._queue:  # left only when this task is cancelled
                future.cancel()
            self._queue.clear()

    async def _write_batch(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            answers = list(await self._write([item for item, _ in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} items")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:  # cancelled: its submitters are told so
            for _, future in batch:
                future.cancel()
            raise
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

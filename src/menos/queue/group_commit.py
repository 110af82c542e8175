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
    """

    def __init__(
        self, write: Callable[[Sequence[In]], Awaitable[Sequence[Out]]], *, max_batch: int
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._write = write
        self._max_batch = max_batch
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        """Write `item` with whatever else is waiting; its answer, or the write's exception.

        Cancelling the caller does not withdraw the item: it is written all the same.
        """
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait until every submitted item is written."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def cancel(self) -> None:
        """Stop writing: every item not yet written is dropped and its submitter cancelled."""
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _drain(self) -> None:
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        try:
            await asyncio.sleep(0)
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    answers = list(await self._write([item for item, _ in batch]))
                    if len(answers) != len(batch):
                        raise RuntimeError(f"{len(answers)} answers for {len(batch)} items")
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                else:
                    for (_, future), answer in zip(batch, answers, strict=True):
                        future.set_result(answer)
                batch = []
        finally:
            self._writer = None
            for _, future in [*batch, *self._queue]:  # left only when this task is cancelled
                if not future.done():
                    future.cancel()
            self._queue.clear()

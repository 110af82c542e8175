"""A worker's terminal writes outlive a cancel of their job without an unread failure."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from menos import errors
from menos.queue import worker


async def test_a_write_failing_after_its_caller_was_cancelled_is_no_unretrieved_error() -> None:
    """A stop's deadline cancels a job while its release waits on a database that went
    away: the release's later failure is read, not logged by asyncio as an error
    ("Task exception was never retrieved")."""
    unread: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unread.append(context))

    async def release() -> str:
        await asyncio.sleep(0.05)
        raise errors.DatabaseUnavailable("connection was closed in the middle of operation")

    job = asyncio.ensure_future(worker.shielded(release()))
    await asyncio.sleep(0.01)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await asyncio.sleep(0.1)
    gc.collect()
    await asyncio.sleep(0)
    assert unread == []

"""Waiting for a loop's backoff during a database outage, in the logs it writes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

WAITS = [0.05, 0.1, 0.2, 0.4, 0.8]  # a backoff from a 0.05 s poll: each wait twice the last


async def backed_off(logs: Sequence[dict[str, Any]], event: str) -> None:
    """Return once `event` has been logged five times in a row from a 0.05 s poll, each time
    with twice the wait before the next try, and those waits were waited out (at least their
    sum has passed: 32 polls of 0.05 s would have come meanwhile without a backoff)."""
    began = time.monotonic()
    waits: list[float] = []
    for _ in range(400):
        waits = [entry["retry_in_s"] for entry in logs if entry["event"] == event]
        if len(waits) >= len(WAITS):
            break
        await asyncio.sleep(0.05)  # the interval of this poll for the warnings
    assert waits[: len(WAITS)] == WAITS, waits
    assert time.monotonic() - began >= sum(WAITS[:-1])


@contextlib.asynccontextmanager
async def notifying(pool: asyncpg.Pool[Any], channel: str) -> AsyncIterator[None]:
    """Send a NOTIFY on `channel` every 0.02 s meanwhile: a loop that took each as a reason to
    try again would not wait out its backoff."""

    async def send() -> None:
        while True:
            await pool.execute("SELECT pg_notify($1, '')", channel)
            await asyncio.sleep(0.02)  # the interval of the notifications

    sending = asyncio.create_task(send())
    try:
        yield
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)

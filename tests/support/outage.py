"""Waiting for a loop's backoff during a database outage, in the logs it writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

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

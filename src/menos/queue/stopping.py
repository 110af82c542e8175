"""The last bound on a stopping service: once asked to stop, a worker or dispatcher gets its
grace period and a margin, then is cancelled, so a database that stopped answering (each
statement waits out its command timeout, a cancelled one the server's confirmation) cannot
hold it for minutes. What it leaves undone, leases and holds recover."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("menos.queue")

# Beyond the grace period: time for the last writes (releases, metric totals) to a database
# that answers, which take milliseconds.
MARGIN_S = 10.0


async def run_until_stopped(
    service: Coroutine[Any, Any, None], stop: asyncio.Event, *, grace_s: float, name: str
) -> None:
    """Run `service` to its end, but cancel it `grace_s + MARGIN_S` seconds after `stop`."""
    running = asyncio.create_task(service, name=name)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            await asyncio.wait([running], timeout=grace_s + MARGIN_S)
        if not running.done():
            log.warning("stop_deadline_passed", service=name, seconds=grace_s + MARGIN_S)
            running.cancel()
            # A statement being cancelled waits for the server; closing the pool ends it.
            await asyncio.wait([running], timeout=1.0)
    finally:
        stopping.cancel()
    if running.done() and not running.cancelled():
        running.result()  # its error, if it failed

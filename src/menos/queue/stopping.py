"""The last bound on a stopping service: once asked to stop, a worker or dispatcher gets its
grace period and a margin, then is cancelled, so a database that stopped answering (each
statement waits out its command timeout, a cancelled one the server's confirmation) cannot
hold it for minutes. A second request (`hurry`) ends the grace period at once. What it leaves
undone, leases and holds recover."""

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
    service: Coroutine[Any, Any, None],
    stop: asyncio.Event,
    *,
    hurry: asyncio.Event,
    grace_s: float,
    name: str,
) -> None:
    """Run `service` to its end, but cancel it `grace_s + MARGIN_S` seconds after `stop`, or
    MARGIN_S seconds after `hurry` if that comes first."""
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(service, name=name)
    stopping = asyncio.create_task(stop.wait())
    hurrying = asyncio.create_task(hurry.wait())
    try:
        await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopped_at = loop.time()
        deadline = stopped_at + grace_s + MARGIN_S
        if not running.done():
            await asyncio.wait(
                [running, hurrying], timeout=grace_s + MARGIN_S, return_when=asyncio.FIRST_COMPLETED
            )
        if not running.done() and hurrying.done():  # hurried: MARGIN_S from now at most
            await asyncio.wait([running], timeout=min(MARGIN_S, deadline - loop.time()))
        if not running.done():
            log.warning(
                "stop_deadline_passed", service=name, seconds=round(loop.time() - stopped_at, 1)
            )
            running.cancel()
            # A statement being cancelled waits for the server; closing the pool ends it.
            await asyncio.wait([running], timeout=1.0)
    finally:
        stopping.cancel()
        hurrying.cancel()
    if running.done() and not running.cancelled():
        running.result()  # its error, if it failed


def on_signal(stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """A stop signal's handler: the first asks for a graceful stop, the next ones hurry it."""
    if not stop.is_set():
        stop.set()
    elif not hurry.is_set():
        log.warning("stop_hurried")
        hurry.set()

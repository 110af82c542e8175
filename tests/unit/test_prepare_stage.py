"""The prepare stage of a long text leaves the worker's event loop free for its heartbeat."""

from __future__ import annotations

import asyncio
import threading
from typing import SupportsIndex

import httpx

from menos.pipeline import stages
from menos.pipeline.analyzers import builtin
from tests.support.pipeline import QuietPort, offline_context

WAIT_S = 2.0  # how long the text waits for the event loop before it gives up


class LoopProbe(str):
    """A page body whose whitespace normalization waits until the event loop has run
    another task: it can only go on when the normalization runs off the event loop."""

    started: threading.Event
    loop_ran: threading.Event
    released: bool | None

    def replace(self, old: str, new: str, count: SupportsIndex = -1) -> str:
        if old == "\r\n" and self.released is None:
            self.started.set()
            self.released = self.loop_ran.wait(WAIT_S)
        return str(self).replace(old, new, count)


async def test_a_long_text_is_prepared_while_the_event_loop_goes_on() -> None:
    """Normalizing a long text (most of a second for 5 MiB) runs off the event loop, so the
    worker's heartbeat renews its leases meanwhile instead of letting them expire."""
    body = LoopProbe("Workers claim jobs and renew their leases.  \r\n" * 2_000)
    body.started, body.loop_ran, body.released = threading.Event(), threading.Event(), None

    async def beat() -> None:  # what the heartbeat needs: a turn of the event loop
        await asyncio.to_thread(body.started.wait, WAIT_S)
        body.loop_ran.set()

    heartbeat = asyncio.create_task(beat())
    item = stages.Item(
        owner="alice",
        content_type="web",
        resource_key="url:DxFdsGK3wN0DCxaH",
        source_url="https://example.com/",
        title="t",
        tags=[],
        body=body,
        source_metadata={"final_url": "https://example.com/"},
    )
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, builtin.BuiltinAnalyzer())
        run = stages.Run(full=False, clock=ctx.clock)
        try:
            await stages.run_pipeline(item, QuietPort(), ctx, run)
        finally:
            heartbeat.cancel()
    assert body.released is True
    assert run.diagnostics["prepared_chars"] == len(body.replace("  \r\n", "\n").strip())

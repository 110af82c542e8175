"""The stop bound: a service gets its grace after a stop, and only a margin once hurried."""

from __future__ import annotations

import asyncio

import pytest

from menos.queue import stopping


async def test_a_service_that_ends_within_its_grace_is_not_cancelled() -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()
    ended = asyncio.Event()

    async def service() -> None:
        await stop.wait()
        await asyncio.sleep(0)  # its last writes
        ended.set()

    stop.set()
    await stopping.run_until_stopped(service(), stop, hurry=hurry, grace_s=60, name="svc")
    assert ended.is_set()


async def test_a_hurried_service_is_cancelled_after_the_margin_not_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service that ignores `hurry` is cancelled MARGIN_S after it, however long the grace."""
    monkeypatch.setattr(stopping, "MARGIN_S", 0.05)
    stop, hurry = asyncio.Event(), asyncio.Event()
    cancelled = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bounded = asyncio.create_task(
        stopping.run_until_stopped(stubborn(), stop, hurry=hurry, grace_s=3600, name="svc")
    )
    stop.set()
    await asyncio.sleep(0.1)  # well past the margin: without `hurry`, still in its grace
    assert not bounded.done()
    stopping.on_signal(stop, hurry)  # the second signal
    await asyncio.wait_for(bounded, timeout=30)
    assert cancelled.is_set()


def test_the_first_signal_stops_and_the_second_hurries() -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()
    stopping.on_signal(stop, hurry)
    assert stop.is_set() and not hurry.is_set()
    stopping.on_signal(stop, hurry)
    assert hurry.is_set()

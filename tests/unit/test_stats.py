"""A process's metric samples: when they are written, and their retirement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from menos.queue import stats


class Store:
    """Records calls in order; can be told to refuse writes or to hold one open."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush_stats(self, process_id: str, samples: Sequence[tuple[str, str, float]]) -> None:
        if self.down:
            raise ConnectionError("database down")
        await self.gate.wait()
        self.calls.append(("write", list(samples)))

    async def retire_stats(self, process_id: str) -> int:
        self.calls.append(("fold", process_id))
        return 1

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


async def test_writes_when_changed_and_at_least_every_touch_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(stats.time, "monotonic", lambda: now[0])
    store, counts = Store(), stats.ProcessStats()
    flusher = stats.Flusher(store, "p", counts)
    await flusher.flush()
    assert store.calls == []  # nothing changed, nothing due
    counts.count_delivery("delivered")
    await flusher.flush()
    await flusher.flush()
    assert store.kinds() == ["write"]
    now[0] += stats.TOUCH_S  # unchanged, but a live process shows it is alive
    await flusher.flush()
    assert store.kinds() == ["write", "write"]


async def test_a_failed_last_write_keeps_the_rows_for_the_purge() -> None:
    store, counts = Store(), stats.ProcessStats()
    flusher = stats.Flusher(store, "p", counts)
    counts.count_delivery("delivered")
    store.down = True
    await flusher.retire()
    assert store.kinds() == []  # folding older values would lose the latest
    store.down = False
    await flusher.retire()
    assert store.calls == [
        ("write", [(stats.DELIVERIES, "outcome=delivered", 1)]),
        ("fold", flusher.run_id),
    ]


async def test_retiring_waits_for_a_write_under_way_and_nothing_is_written_after() -> None:
    """A heartbeat's write still going when the process stops must land before the fold:
    after it, the process's rows would be written back next to the retired total."""
    store, counts = Store(), stats.ProcessStats()
    flusher = stats.Flusher(store, "p", counts)
    counts.count_delivery("delivered")
    store.gate.clear()
    writing = asyncio.create_task(flusher.flush())
    await asyncio.sleep(0)
    counts.count_delivery("delivered")  # counted while the write is under way
    retiring = asyncio.create_task(flusher.retire())
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(writing, retiring)
    assert store.kinds() == ["write", "write", "fold"]
    assert store.calls[1] == ("write", [(stats.DELIVERIES, "outcome=delivered", 2)])
    counts.count_delivery("delivered")
    await flusher.flush()
    assert store.kinds() == ["write", "write", "fold"]


async def test_two_runs_under_one_id_write_rows_of_their_own() -> None:
    """Two live workers given one `--worker-id` overwrote each other's totals (a counter
    went 12, 20, 13, 21: resets to Prometheus), and the id `(retired)` overwrote the retired
    total itself: every run writes under its own id."""
    store = Store()
    ids = {stats.Flusher(store, name, stats.ProcessStats()).run_id for name in ["w", "w"]}
    assert len(ids) == 2 and all(i.startswith("w#") for i in ids)
    assert stats.Flusher(store, "(retired)", stats.ProcessStats()).run_id != "(retired)"

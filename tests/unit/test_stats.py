"""A process's metric samples: when they are written, and their retirement."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from menos.queue import stats


class Store:
    """Records writes; can be told to refuse them."""

    def __init__(self) -> None:
        self.writes: list[list[tuple[str, str, float]]] = []
        self.retired: list[str] = []
        self.down = False

    async def flush_stats(self, process_id: str, samples: Sequence[tuple[str, str, float]]) -> None:
        if self.down:
            raise ConnectionError("database down")
        self.writes.append(list(samples))

    async def retire_stats(self, process_id: str) -> int:
        self.retired.append(process_id)
        return 1


async def test_writes_when_changed_and_at_least_every_touch_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(stats.time, "monotonic", lambda: now[0])
    store, counts = Store(), stats.ProcessStats()
    flusher = stats.Flusher(store, "p", counts)
    await flusher.flush()
    assert store.writes == []  # nothing changed, nothing due
    counts.count_delivery("delivered")
    await flusher.flush()
    await flusher.flush()
    assert len(store.writes) == 1
    now[0] += stats.TOUCH_S  # unchanged, but a live process shows it is alive
    await flusher.flush()
    assert len(store.writes) == 2


async def test_a_failed_last_write_keeps_the_rows_for_the_purge() -> None:
    store, counts = Store(), stats.ProcessStats()
    flusher = stats.Flusher(store, "p", counts)
    counts.count_delivery("delivered")
    store.down = True
    await flusher.retire()
    assert store.retired == []  # folding older values would lose the newest ones
    store.down = False
    await flusher.retire()
    assert store.retired == ["p"] and store.writes == [[(stats.DELIVERIES, "outcome=delivered", 1)]]

"""Per-process cumulative metrics (stage durations, deliveries) flushed to the database."""

from __future__ import annotations

import asyncio
import bisect
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import structlog

log = structlog.get_logger("menos.stats")

STAGE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
STAGE_HISTOGRAM = "menos_stage_duration_seconds"
DELIVERIES = "menos_callback_deliveries_total"
# A process that changed nothing still writes its samples this often, so the purge can tell a
# live process from one that died without retiring its samples (QUIET_S, in maintenance).
TOUCH_S = 3600.0


class ProcessStats:
    """Counts kept in memory by one process; `samples()` gives cumulative values to flush."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(STAGE_BUCKETS))
        self._count: dict[str, int] = defaultdict(int)
        self._sum: dict[str, float] = defaultdict(float)
        self._deliveries: dict[str, int] = defaultdict(int)
        self.dirty = False

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One stage run took `seconds`."""
        index = bisect.bisect_left(STAGE_BUCKETS, seconds)
        buckets = self._buckets[stage]
        for i in range(index, len(STAGE_BUCKETS)):
            buckets[i] += 1
        self._count[stage] += 1
        self._sum[stage] += seconds
        self.dirty = True

    def count_delivery(self, outcome: str) -> None:
        """One callback attempt ended with `outcome` (delivered, retry, failed)."""
        self._deliveries[outcome] += 1
        self.dirty = True

    def samples(self) -> list[tuple[str, str, float]]:
        """(name, labels, cumulative value); labels are `key=value` pairs joined by commas."""
        out: list[tuple[str, str, float]] = []
        for stage, buckets in self._buckets.items():
            for bound, count in zip(STAGE_BUCKETS, buckets, strict=True):
                out.append((f"{STAGE_HISTOGRAM}_bucket", f"stage={stage},le={bound}", count))
            out.append((f"{STAGE_HISTOGRAM}_count", f"stage={stage}", self._count[stage]))
            out.append((f"{STAGE_HISTOGRAM}_sum", f"stage={stage}", self._sum[stage]))
        out += [(DELIVERIES, f"outcome={k}", v) for k, v in self._deliveries.items()]
        return out


class SampleStore(Protocol):
    """Where samples go (the repository)."""

    async def flush_stats(
        self, process_id: str, samples: Sequence[tuple[str, str, float]]
    ) -> None: ...

    async def retire_stats(self, process_id: str) -> int: ...


class Flusher:
    """Writes one process's samples: when they changed, at least every TOUCH_S, and when the
    process stops, when it also folds them into the retired total so their rows go.

    Each run writes its rows under its own id, `process_id` and a random suffix: two live
    processes given one `--worker-id`, or a run after one that was killed, never overwrite
    each other's totals. Writes and the retirement take turns, and nothing is written after
    it."""

    def __init__(self, store: SampleStore, process_id: str, stats: ProcessStats) -> None:
        self._store = store
        self.run_id = f"{process_id}#{secrets.token_hex(4)}"
        self._stats = stats
        self._written_at = time.monotonic()
        self._lock = asyncio.Lock()
        self._retired = False

    async def flush(self) -> bool:
        """Write the samples if due; False when the write failed (tried again next time)."""
        async with self._lock:
            return await self._flush()

    async def retire(self) -> None:
        """Last write of a stopping process, then its rows fold into the retired total; when
        either fails the rows stay, and the purge folds them once they have been quiet."""
        async with self._lock:
            if self._retired or not await self._flush():
                return
            self._retired = True
            try:
                await self._store.retire_stats(self.run_id)
            except Exception as exc:
                log.warning("stats_retire_failed", error=str(exc))

    async def _flush(self) -> bool:
        stats = self._stats
        if self._retired:
            return True
        if not stats.dirty and time.monotonic() - self._written_at < TOUCH_S:
            return True
        stats.dirty = False  # what is counted while the write is under way makes it dirty again
        samples = stats.samples()
        try:
            await self._store.flush_stats(self.run_id, samples)
        except Exception as exc:
            stats.dirty = True
            log.warning("stats_flush_failed", error=str(exc))
            return False
        self._written_at = time.monotonic()
        return True

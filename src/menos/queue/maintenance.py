"""Retention: the batched, idempotent purge, run hourly by one worker at a time and on demand."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from menos import errors
from menos.queue import repository, stats

log = structlog.get_logger("menos.maintenance")

DUTY = "menos.purge"
# A process whose metric samples are this old is gone: live ones write theirs at least every
# stats.TOUCH_S, and a stopping one folds its own.
QUIET = dt.timedelta(seconds=24 * stats.TOUCH_S)


class PurgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Retention periods (DESIGN §8) and how the purge runs."""

    compact_days: int
    full_days: int
    batch: int = 1000
    interval_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.compact_days < 1 or self.full_days < 1 or self.batch < 1 or self.interval_s <= 0:
            raise ValueError("retention days, batch and interval must be positive")


def _days_before(at: dt.datetime, days: int) -> dt.datetime:
    """`days` before `at`; a retention reaching past year 1 keeps everything."""
    try:
        return at - dt.timedelta(days=days)
    except OverflowError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)


class Purger:
    """Deletes expired jobs (with their delivered or failed outbox rows) and audit events,
    and clears expired full-tier payloads; a job whose callback is still pending stays."""

    def __init__(self, config: PurgeConfig, repo: repository.Repository) -> None:
        self._config = config
        self._repo = repo

    async def cutoffs(
        self, now: dt.datetime | None = None
    ) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
        """(jobs and audit events before, full payloads before, metric samples quiet since),
        counted back from `now` or else the database's clock, which stamped every time they
        are compared with (finished_at, at, updated_at): this host's clock may be off."""
        at = now or await self._repo.database_now()
        return (
            _days_before(at, self._config.compact_days),
            _days_before(at, self._config.full_days),
            at - QUIET,
        )

    async def preview(self, now: dt.datetime | None = None) -> repository.PurgeCounts:
        """What `run_once` would remove now (`purge --dry-run`)."""
        return await self._repo.purge_preview(*(await self.cutoffs(now)))

    async def run_once(self, now: dt.datetime | None = None) -> repository.PurgeCounts:
        """Purge everything expired, batch by batch; running it again removes nothing more."""
        jobs_before, full_before, quiet_since = await self.cutoffs(now)
        batch = self._config.batch
        taken = 0  # full payloads that went with their jobs

        async def jobs() -> int:
            nonlocal taken
            deleted, payloads = await self._repo.purge_jobs(jobs_before, full_before, batch)
            taken += payloads
            return deleted

        # Expired jobs go first, payloads and all: clearing a payload rewrites its job's row
        # (and an entry in each index), wasted on a job deleted next.
        purged_jobs = await self._in_batches(jobs)
        cleared = await self._in_batches(
            lambda: self._repo.purge_batch("full_payloads", full_before, batch)
        )
        purged = repository.PurgeCounts(
            jobs=purged_jobs,
            full_payloads=taken + cleared,
            audit_events=await self._in_batches(
                lambda: self._repo.purge_batch("audit_events", jobs_before, batch)
            ),
            metric_processes=await self._repo.retire_stats(quiet_since=quiet_since),
        )
        log.info("purge_finished", **msgspec.to_builtins(purged))
        return purged

    async def _in_batches(self, step: Callable[[], Awaitable[int]]) -> int:
        """`step` again until a batch comes back short; the rows it touched in all."""
        total = 0
        while True:
            done = await step()
            total += done
            if done < self._config.batch:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        """Every interval, purge if no other process is purging; errors are logged."""
        while not stop.is_set():
            try:
                async with self._repo.leader(DUTY) as leading:
                    if leading:
                        await self.run_once()
            except errors.DatabaseUnavailable as exc:
                log.warning("purge_database_unavailable", error=str(exc))
            except Exception:
                log.exception("purge_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._config.interval_s)

"""The rescuer: takes jobs back from workers whose lease expired."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import structlog

from menos import errors
from menos.queue import repository

log = structlog.get_logger("menos.rescuer")


class Rescuer:
    """Returns expired-lease jobs to pending, or fails them WORKER_LOST after max attempts.

    Several rescuers may run at once: expired rows are taken with SKIP LOCKED, and a worker's
    guarded write after a rescue changes nothing.
    """

    def __init__(
        self, repo: repository.Repository, *, max_attempts: int, interval_s: float
    ) -> None:
        if max_attempts < 1 or interval_s <= 0:
            raise ValueError("max_attempts must be >= 1 and interval_s > 0")
        self._repo = repo
        self._max_attempts = max_attempts
        self._interval_s = interval_s

    async def run_once(self, now: dt.datetime | None = None) -> int:
        """One sweep; returns how many jobs were taken back."""
        rescued, refused = await self._repo.rescue_expired(max_attempts=self._max_attempts, now=now)
        for unrescued in refused:
            log.error("job_rescue_refused", job_id=str(unrescued.job_id), error=unrescued.error)
        for job in rescued:
            log.warning(
                "job_rescued",
                job_id=str(job.job_id),
                content_id=str(job.content_id),
                # every line of a job names its worker: here the one whose lease ran out
                worker_id=job.lost_worker_id,
                status=job.status,
                attempts=job.attempts,
                lost_worker_id=job.lost_worker_id,
            )
        return len(rescued)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every interval until `stop` is set; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                await self.run_once()
            except errors.DatabaseUnavailable as exc:
                log.warning("rescuer_database_unavailable", error=str(exc))
            except Exception:
                log.exception("rescuer_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)

"""The outbox half of the repository: claiming callback events, recording attempts, sweeping."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, TypeVar

import asyncpg
import msgspec

from menos import db, errors
from menos.queue import models

T = TypeVar("T")

OutboxStatus = Literal["pending", "delivered", "failed"]

AUDIT_EVENT = "audit.callback_delivery"


def _row(row: asyncpg.Record, into: type[T]) -> T:
    return msgspec.convert(dict(row.items()), into, strict=False)


class Swept(msgspec.Struct, frozen=True, kw_only=True):
    """An event ended failed because its last attempt was sent but never recorded."""

    event_id: uuid.UUID
    job_id: models.JobId
    owner: models.Owner
    url: str
    attempts: int
    last_error: str


class OutboxRepository:
    """Named outbox queries over one asyncpg pool.

    Claims count the attempt and commit before anything is sent; every write after a claim
    is guarded by (event_id, attempts, pending): a None or False answer means the event moved
    on (claimed again after its hold ran out, or ended) and the outcome was not recorded.
    Each recorded attempt and its `audit.callback_delivery` row are one transaction.
    """

    def __init__(self, pool: asyncpg.Pool[Any], queries: db.Queries) -> None:
        self._pool = pool
        self._q = queries

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except db.CONNECTION_ERRORS as exc:
            raise errors.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc

    async def claim_due(
        self,
        limit: int,
        *,
        max_attempts: int,
        backoff_s: float,
        hold_s: float,
        now: dt.datetime | None = None,
    ) -> list[models.OutboxEvent]:
        """Claim up to `limit` due events for one attempt each (several claimers are safe).

        The attempt is counted and the event held for `hold_s` seconds (at least the attempt's
        timeout), before the last attempt also for at least the next backoff, in the claim's
        own committed statement: an attempt whose sender dies still counts.
        """
        async with self._conn() as conn:
            rows = await conn.fetch(
                self._q["claim_outbox_events"], now, limit, max_attempts, backoff_s, hold_s
            )
        return [_row(r, models.OutboxEvent) for r in rows]

    async def record_delivered(
        self,
        event: models.OutboxEvent,
        *,
        status_code: int,
        duration_ms: float,
        now: dt.datetime | None = None,
    ) -> bool:
        """Mark the event delivered by this attempt; False when the event moved on."""
        async with self._conn() as conn, conn.transaction():
            status = await conn.fetchval(
                self._q["record_outbox_delivered"], event.event_id, event.attempts, status_code, now
            )
            await self._audit(
                conn,
                event,
                {
                    "attempt": event.attempts,
                    "outcome": "delivered",
                    "status_code": status_code,
                    "error": None,
                    "duration_ms": duration_ms,
                    "status": status,
                },
            )
        return status is not None

    async def record_failure(
        self,
        event: models.OutboxEvent,
        *,
        status_code: int | None,
        error: str,
        duration_ms: float,
        max_attempts: int,
        backoff_s: float,
        now: dt.datetime | None = None,
    ) -> OutboxStatus | None:
        """Record a failed attempt: `pending` again after the backoff, or `failed` after the last.

        The retry comes `backoff_s * 4 ** (attempt - 1)` seconds after `now`. None when the
        event moved on.
        """
        error = error[: errors.MAX_ERROR_MESSAGE]
        async with self._conn() as conn, conn.transaction():
            status: OutboxStatus | None = await conn.fetchval(
                self._q["record_outbox_failure"],
                event.event_id,
                event.attempts,
                status_code,
                error,
                backoff_s,
                max_attempts,
                now,
            )
            await self._audit(
                conn,
                event,
                {
                    "attempt": event.attempts,
                    "outcome": "failed",
                    "status_code": status_code,
                    "error": error,
                    "duration_ms": duration_ms,
                    "status": status,
                },
            )
        return status

    async def sweep_exhausted(
        self, *, max_attempts: int, now: dt.datetime | None = None
    ) -> list[Swept]:
        """End as `failed` the events whose last attempt's hold ran out with no outcome recorded."""
        async with self._conn() as conn, conn.transaction():
            swept = [
                _row(r, Swept)
                for r in await conn.fetch(
                    self._q["fail_exhausted_outbox_events"], now, max_attempts
                )
            ]
            for event in swept:
                await conn.execute(
                    self._q["insert_audit_event"],
                    AUDIT_EVENT,
                    event.owner,
                    None,
                    event.job_id,
                    {
                        "event_id": str(event.event_id),
                        "url": event.url,
                        "attempt": event.attempts,
                        "outcome": "lost",
                        "status_code": None,
                        "error": event.last_error,
                        "duration_ms": None,
                        "status": "failed",
                    },
                )
        return swept

    async def owner_secrets(self, owner: str, *, now: dt.datetime | None = None) -> list[str]:
        """The secrets signing the owner's callbacks now; empty when the owner is unknown.

        The current secret comes first, then the previous one while a rotation's overlap lasts.
        """
        async with self._conn() as conn:
            row = await conn.fetchrow(self._q["owner_secrets"], owner, now)
        if row is None:
            return []
        return [s for s in (row["webhook_secret"], row["previous_webhook_secret"]) if s]

    async def next_due_in(self, *, now: dt.datetime | None = None) -> float | None:
        """Seconds until the earliest pending event is due (≤ 0: due now); None when none waits.

        Measured on the database's clock, so dispatcher clocks may drift freely.
        """
        async with self._conn() as conn:
            seconds: float | None = await conn.fetchval(self._q["outbox_next_due_in"], now)
        return seconds

    async def _audit(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[Any],
        event: models.OutboxEvent,
        detail: Mapping[str, Any],
    ) -> None:
        await conn.execute(
            self._q["insert_audit_event"],
            AUDIT_EVENT,
            event.owner,
            None,
            event.job_id,
            {"event_id": str(event.event_id), "url": event.url, **detail},
        )

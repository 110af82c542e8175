"""The only runtime code that runs SQL: jobs, content, keys, audit events and the outbox.

Rows stop here: every method returns frozen structs from `models`. Driver errors are
translated into the MenosError tree. Writes after a claim are guarded by (job, worker,
attempts): a False, None or empty answer means the job was lost and the caller drops its work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import asyncpg
import msgspec
import structlog

from menos import db, errors, storable
from menos.queue import models

T = TypeVar("T")
log = structlog.get_logger("menos.audit")

SECRET_OVERLAP = dt.timedelta(hours=24)
# What a claim sends of its content bodies: far below what a socket's buffers hold, so a
# claimer that stops reading cannot keep the claim (and every other claim) from committing.
CLAIM_INLINE_BYTES = 64 * 1024
_DOTTED_NUMBERS = re.compile(r"[0-9]+(\.[0-9]+)*")
# The owner table's CHECK, tested first: a row the server refuses is written to its log
# whole, and an owner's row holds its new webhook secret.
OWNER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
OWNER_NAME_RULE = "use 1-64 characters of letters, digits, '.', '_' or '-'"


def _row(row: asyncpg.Record, into: type[T]) -> T:
    return msgspec.convert(dict(row.items()), into, strict=False)


def _job(row: asyncpg.Record) -> models.Job:
    """One job as read for the API: a stage timing that does not read as one (written by hand,
    as sql.md lets a user write rows) is left out, and diagnostics or a full payload that is no
    JSON object reads as none, so that the job itself stays readable; the minimal view does
    not even show them."""
    fields = dict(row.items())
    if not isinstance(fields["diagnostics"], dict):
        fields["diagnostics"] = {}
    if not isinstance(fields["full_payload"], dict | None):
        fields["full_payload"] = None
    stages = fields["stages"] if isinstance(fields["stages"], list) else []
    kept = []
    for stage in stages:
        try:
            kept.append(msgspec.convert(stage, models.StageTiming, strict=False))
        except msgspec.ValidationError:
            continue
    fields["stages"] = kept
    return msgspec.convert(fields, models.Job, strict=False)


def _content(row: asyncpg.Record) -> models.Content:
    """One content item, read as `_job` reads a job: `source_metadata` that is no JSON object
    (written by hand, as sql.md lets a user write rows) reads as empty and a `result` that is
    no object as none, so that the item stays readable and its job can be claimed."""
    fields = dict(row.items())
    if not isinstance(fields["source_metadata"], dict):
        fields["source_metadata"] = {}
    if not isinstance(fields["result"], dict | None):
        fields["result"] = None
    return msgspec.convert(fields, models.Content, strict=False)


def _timings(stages: Sequence[models.StageTiming]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(stage) for stage in stages]


def hash_key(api_key: str) -> bytes:
    """What is stored for an API key: its SHA-256 (keys carry 256 random bits)."""
    return hashlib.sha256(api_key.encode()).digest()


def new_webhook_secret() -> str:
    """`whsec_` + standard base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Guard(msgspec.Struct, frozen=True):
    """What every write after a claim checks: the job is still ours, at this attempt."""

    job_id: models.JobId
    worker_id: str
    attempts: int


def _new_item(new: models.NewContent, job_id: uuid.UUID) -> dict[str, Any]:
    """One element of `insert_contents_and_jobs`'s JSON array."""
    return {
        **msgspec.structs.asdict(new),
        "content_id": models.new_id(),
        "job_id": job_id,
    }


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A finished run to persist: its guard and everything the run produced."""

    guard: Guard
    result: dict[str, Any]
    tags: list[str]
    stages: list[models.StageTiming]
    diagnostics: dict[str, Any]
    full_payload: dict[str, Any] | None


def completion_row(run: Completion) -> dict[str, Any]:
    """One element of `complete_jobs`'s JSON array."""
    return {
        "job_id": run.guard.job_id,
        "worker_id": run.guard.worker_id,
        "attempts": run.guard.attempts,
        "stages": run.stages,
        "diagnostics": run.diagnostics,
        "full_payload": run.full_payload,
        "result": run.result,
        "tags": run.tags,
    }


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """What `GET /ready` reports about the database."""

    pending_migrations: list[int]
    mismatch: str | None  # why the applied migrations are not this code's files, if they are not
    read_only: bool


class CreatedKey(msgspec.Struct, frozen=True):
    """A new API key, shown once."""

    key_id: uuid.UUID
    owner: str
    role: models.Role
    api_key: str
    webhook_secret: str


class Beat(msgspec.Struct, frozen=True):
    """A held job's answer to a heartbeat."""

    renewed: bool  # false: another transaction has its row locked, its lease was left as it is
    cancel_requested: bool


class Rescued(msgspec.Struct, frozen=True):
    """A job the rescuer took back from a lost worker."""

    job_id: models.JobId
    content_id: models.ContentId
    status: models.JobStatus
    attempts: int
    lost_worker_id: str | None  # the worker whose lease ran out


class Rotation(msgspec.Struct, frozen=True):
    """A new webhook secret, and until when the secret it dropped early would have signed
    (None: the secret it replaced as previous had already stopped signing, or there was none)."""

    secret: str
    dropped_until: dt.datetime | None


class Unrescued(msgspec.Struct, frozen=True):
    """An expired job the database refused to take back, and why."""

    job_id: models.JobId
    error: str


class Reprocessed(msgspec.Struct, frozen=True):
    """What a reprocess request did: `submitted`, `already_active` or `already_completed`."""

    status: Literal["submitted", "already_active", "already_completed"]
    job_id: models.JobId | None
    content_id: models.ContentId
    owner: str  # the content's


class Page(msgspec.Struct, Generic[T], frozen=True):
    """One page of a newest-first list and the key of its last item."""

    items: list[T]
    last: tuple[dt.datetime, uuid.UUID] | None  # set when a next page may exist


class PurgeCounts(msgspec.Struct, frozen=True):
    """Rows a purge removed (or, in a preview, would remove)."""

    jobs: int = 0
    full_payloads: int = 0
    audit_events: int = 0
    metric_processes: int = 0  # gone processes whose metric samples were folded into one total


class StatusCount(msgspec.Struct, frozen=True):
    """Jobs in one status, and for pending the age of the oldest."""

    status: models.JobStatus
    jobs: int
    oldest_age_s: float | None


class MetricTotal(msgspec.Struct, frozen=True):
    """One metric summed over every process that flushed it."""

    name: str
    labels: str
    value: float


Ended = Literal["completed", "cancelled"]
Persisted = Ended | None  # None: the job was no longer held, nothing was written


class CancelOutcome(msgspec.Struct, frozen=True):
    """What a cancel request found and did."""

    job_id: models.JobId
    previous: models.JobStatus
    status: models.JobStatus
    owner: str  # the job's

    @property
    def result(self) -> Literal["cancelled", "cancel_requested", "refused"]:
        """`cancelled` (it was pending), `cancel_requested` (processing), else `refused`."""
        if self.previous == "pending":
            return "cancelled"
        return "cancel_requested" if self.previous == "processing" else "refused"


class Actor(msgspec.Struct, frozen=True):
    """Who acts, for the audit trail: an API key (its id, and `actor_owner` in `detail`), or a
    command (`via` in `detail`)."""

    key_id: uuid.UUID | None
    detail: dict[str, Any]

    def did(self, event: str, *, owner: str, subject: uuid.UUID, **detail: Any) -> AuditEvent:
        """The audit event of this actor's action `event` on `subject`."""
        return AuditEvent(
            event=event,
            owner=owner,
            actor_key_id=self.key_id,
            subject=subject,
            detail={**detail, **self.detail},
        )


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `menos.audit_event`, and one log line once it is stored."""

    event: str
    owner: str | None
    actor_key_id: uuid.UUID | None
    subject: uuid.UUID | None
    detail: dict[str, Any]


def _drop(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
    """Close `conn` at once. One the server ended is already back in the pool (asyncpg gives
    it back as it closes): terminating it then raises InterfaceError, which is no failure."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class _Store:
    """Named queries over one asyncpg pool; connection failures become DatabaseUnavailable."""

    def __init__(
        self, pool: asyncpg.Pool[Any], queries: db.Queries, *, deadline_s: float | None = None
    ) -> None:
        """`deadline_s` bounds each use of a connection, from acquiring it to giving it back
        (a request's lookup or write): past it the use ends with DatabaseUnavailable, as does
        a statement the server cancelled (its statement_timeout, set under the deadline)."""
        self._pool = pool
        self._q = queries
        self._deadline_s = deadline_s

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        try:
            async with asyncio.timeout(self._deadline_s), self._held() as conn:
                yield conn
        except TimeoutError as exc:  # the deadline's: the driver's own are translated inside
            raise errors.DatabaseUnavailable(f"no answer within {self._deadline_s} s") from exc

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        try:
            # Acquiring may open a connection, and the server can refuse the login itself
            # (database not accepting connections, password changed): no answer either way.
            conn = await self._pool.acquire()
        except db.CONNECT_REFUSALS as exc:
            raise errors.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            yield conn
        except asyncio.CancelledError:
            # Its statement may still be running (or its cancellation waiting on a silent
            # database): giving it back would wait for that, so it is dropped instead.
            _drop(conn)
            raise
        except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
            # The client's protocol state no longer matches the server's (seen when the
            # server shuts down mid-operation): never hand this connection out again.
            _drop(conn)
            raise errors.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        except db.STATEMENT_GAVE_UP as exc:
            # The server gave up on the statement without judging it: nothing was written,
            # and the same statement may well succeed once the row is free.
            raise errors.DatabaseUnavailable(str(exc)) from exc
        except asyncpg.exceptions.ReadOnlySQLTransactionError as exc:
            # A session keeps the default_transaction_read_only it started with: once the
            # database's setting is reset, only new sessions can write, so these are replaced.
            await self._pool.expire_connections()
            raise errors.DatabaseUnavailable(str(exc)) from exc
        except db.CONNECTION_ERRORS as exc:
            raise errors.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            try:
                await self._pool.release(conn)
            except db.CONNECTION_ERRORS as exc:  # its reset met a connection already gone
                raise errors.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc

    async def flush_stats(self, process_id: str, samples: Sequence[tuple[str, str, float]]) -> None:
        """Store this process's cumulative metric values."""
        if not samples:
            return
        async with self._conn() as conn:
            await conn.execute(
                self._q["upsert_metric_samples"],
                process_id,
                [s[0] for s in samples],
                [s[1] for s in samples],
                [float(s[2]) for s in samples],
            )

    async def retire_stats(
        self, process_id: str | None = None, *, quiet_since: dt.datetime | None = None
    ) -> int:
        """Fold the samples of a stopping process, and of every process that has written none
        since `quiet_since`, into the retired total; returns how many processes were folded."""
        async with self._conn() as conn:
            folded = await conn.fetchval(
                self._q["retire_metric_samples"],
                [process_id] if process_id else [],
                quiet_since,
            )
        return int(folded)


class Repository(_Store):
    """Jobs, content, keys, audit events, maintenance and metrics."""

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(self._q[name], *args))

    async def _fetch_committed(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """`_fetch` in a transaction of its own, committed only once the statement has
        answered. Alone, a statement sent to a database that stopped answering (frozen,
        cut off) still commits when the database reads it after the deadline gave up on it
        and the caller was answered 503; in a transaction it is rolled back then, as the
        connection is gone. Only a COMMIT the deadline overtakes stays uncertain."""
        async with self._conn() as conn, conn.transaction():
            return list(await conn.fetch(self._q[name], *args))

    async def _fetch_planned(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """`_fetch` through a statement prepared for this call alone, which PostgreSQL plans
        for these arguments. The listings take optional filters (`$1 IS NULL OR owner = $1`):
        after five runs of one cached statement a connection may keep a generic plan for all
        arguments, and one made for an admin's listing of everyone (a scan of the whole
        table) then served each owner's listing, 2 ms becoming 90 ms at 200,000 items."""
        async with self._conn() as conn:
            statement = await conn.prepare(self._q[name])
            return list(await statement.fetch(*args))

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        async with self._conn() as conn:
            return await conn.fetchrow(self._q[name], *args)

    # -- schema ---------------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        """Migration versions not yet applied, and whether the database refuses writes."""
        async with self._conn() as conn:
            pending = await db.pending_migrations(conn, self._q)  # type: ignore[arg-type]
            mismatch = None
            if not pending:  # as the commands check it: another version's schema is not ours
                try:
                    await db.check_applied(conn, self._q)  # type: ignore[arg-type]
                except errors.SchemaMismatch as exc:
                    mismatch = str(exc)
            read_only: bool = await conn.fetchval(self._q["database_read_only"])
            if read_only:  # sessions started read-only stay so: the next probe gets new ones
                await self._pool.expire_connections()
        return Readiness(pending_migrations=pending, mismatch=mismatch, read_only=read_only)

    # -- submissions ----------------------------------------------------------------------

    async def enqueue(self, new: models.NewContent) -> models.Enqueued:
        """Store content and its first job, or answer the owner's known resource (dedup)."""
        (answer,) = await self.enqueue_many([new])
        return answer

    async def enqueue_many(self, items: Sequence[models.NewContent]) -> list[models.Enqueued]:
        """Store many submissions in one statement and one commit; answers in order.

        Each item is new content with a pending job, or the owner's known resource when it
        has one (dedup). Concurrent identical submissions meet on the content's unique
        (owner, resource_key): exactly one inserts, the others see its row; so do duplicates
        within `items`.
        """
        answers: dict[int, models.Enqueued] = {}
        waiting = list(range(len(items)))
        for _ in range(3):
            fresh = {models.new_id(): index for index in waiting}  # job id -> item
            rows = await self._fetch_committed(
                "insert_contents_and_jobs",
                [_new_item(items[index], job_id) for job_id, index in fresh.items()],
            )
            for row in rows:
                index = fresh[row["job_id"]]
                answers[index] = models.Enqueued(
                    job_id=row["job_id"],
                    content_id=row["content_id"],
                    content_type=items[index].content_type,
                    resource_key=row["resource_key"],
                    status="pending",
                    deduplicated=False,
                )
            for index in waiting:
                if index in answers:
                    continue
                new = items[index]
                assert new.resource_key is not None  # markdown keys are always new
                known = await self._fetchrow("find_resource", new.owner, new.resource_key)
                if known is not None:
                    answers[index] = models.Enqueued(
                        job_id=known["job_id"],
                        content_id=known["content_id"],
                        content_type=known["content_type"],
                        resource_key=known["resource_key"],
                        status=known["status"],
                        deduplicated=True,
                    )
            waiting = [index for index in waiting if index not in answers]
            if not waiting:
                return [answers[index] for index in range(len(items))]
        raise errors.Conflict("the resource changed during submission; retry")

    # -- worker side ----------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        limit: int,
        *,
        max_processing: int,
        lease_s: float,
        pipeline_version: str,
        now: dt.datetime | None = None,
    ) -> list[models.Claimed]:
        """Claim up to `limit` jobs (never more than `max_processing` running in all), each
        with its content row (without its result, which a run does not read).

        The claim holds every worker's claims until its result is sent, so it sends bodies
        only up to CLAIM_INLINE_BYTES in all; the others are read once it has committed, and
        if that read fails the jobs are given back before the error is raised.
        """
        rows = await self._fetch(
            "claim_jobs",
            worker_id,
            limit,
            max_processing,
            lease_s,
            now,
            pipeline_version,
            CLAIM_INLINE_BYTES,
        )
        claimed = [models.Claimed(job=_job(r["job"]), content=_content(r["content"])) for r in rows]
        omitted = [
            c.content.content_id for c, r in zip(claimed, rows, strict=True) if r["body_omitted"]
        ]
        if not omitted:
            return claimed
        try:
            found = await self._fetch("content_bodies", omitted)
        except BaseException:
            # Not run, so not counted; what cannot be given back now, its lease gives back.
            releases = [
                self.release(Guard(c.job.job_id, worker_id, c.job.attempts)) for c in claimed
            ]
            await asyncio.shield(asyncio.gather(*releases, return_exceptions=True))
            raise
        bodies = {r["content_id"]: r["body"] for r in found}
        return [
            msgspec.structs.replace(
                c, content=msgspec.structs.replace(c.content, body=bodies[c.content.content_id])
            )
            if c.content.content_id in bodies
            else c
            for c in claimed
        ]

    async def heartbeat(
        self,
        worker_id: str,
        held: Sequence[tuple[Guard, str | None, list[models.StageTiming]]],
        *,
        lease_s: float,
        now: dt.datetime | None = None,
    ) -> dict[models.JobId, Beat]:
        """Extend the leases of held jobs; answers the jobs still held. Never waits for a row
        lock: one job's row locked elsewhere (an open psql transaction) leaves that lease as
        it is and renews the others."""
        if not held:
            return {}
        rows = await self._fetch(
            "heartbeat",
            [guard.job_id for guard, _, _ in held],
            [guard.attempts for guard, _, _ in held],
            [stage for _, stage, _ in held],
            {str(guard.job_id): _timings(stages) for guard, _, stages in held},
            now,
            lease_s,
            worker_id,
        )
        return {
            row["job_id"]: Beat(renewed=row["renewed"], cancel_requested=row["cancel_requested"])
            for row in rows
        }

    async def save_fetched(
        self, guard: Guard, *, body: str, title: str | None, metadata: Mapping[str, Any]
    ) -> bool:
        """Store the fetch stage's text and metadata while the job is still ours."""
        row = await self._fetchrow(
            "save_fetched",
            guard.job_id,
            guard.worker_id,
            guard.attempts,
            storable.text(body),  # a page or transcript may hold NUL characters
            None if title is None else storable.text(title),
            dict(metadata),
        )
        return row is not None

    async def complete(
        self,
        guard: Guard,
        *,
        result: Mapping[str, Any],
        tags: Sequence[str],
        stages: Sequence[models.StageTiming],
        diagnostics: Mapping[str, Any],
        full_payload: Mapping[str, Any] | None,
        now: dt.datetime | None = None,
    ) -> Persisted:
        """Persist one run (see `complete_many`); PipelineError PERSIST_ERROR if it cannot."""
        run = Completion(
            guard=guard,
            result=dict(result),
            tags=list(tags),
            stages=list(stages),
            diagnostics=dict(diagnostics),
            full_payload=dict(full_payload) if full_payload is not None else None,
        )
        (outcome,) = await self.complete_many([run], now=now)
        if isinstance(outcome, errors.PipelineError):
            raise outcome
        return outcome

    async def complete_many(
        self, runs: Sequence[Completion], *, now: dt.datetime | None = None
    ) -> list[Persisted | errors.PipelineError]:
        """Persist runs in one transaction, each all-or-nothing: result and status on the
        content, the job completed, owner tag counts, outbox row.

        Answers per run, in order: "completed" when written, "cancelled" when a cancel was
        asked before (the job ended cancelled, without its result), None when the job was no
        longer held (lost), or a PERSIST_ERROR. When the batch fails as a whole, each run is
        tried alone, so one run the database refuses fails alone.
        """
        ordered = sorted(runs, key=lambda run: run.guard.job_id)  # rows locked in one order
        try:
            rows = await self._fetch("complete_jobs", [completion_row(r) for r in ordered], now)
        except asyncpg.PostgresError as exc:
            if len(runs) == 1:
                return [errors.PipelineError("PERSIST_ERROR", f"could not persist: {exc}")]
            return [(await self.complete_many([run], now=now))[0] for run in runs]
        except errors.DatabaseUnavailable as exc:
            # The server gave up on the batch (one run waited for a held row): the runs that
            # waited for nothing are not lost with it.
            if len(runs) == 1 or not isinstance(exc.__cause__, db.STATEMENT_GAVE_UP):
                raise
            return [await self._complete_alone(run, now) for run in runs]
        ended: dict[models.JobId, Ended] = {row["job_id"]: row["status"] for row in rows}
        return [ended.get(run.guard.job_id) for run in runs]

    async def _complete_alone(
        self, run: Completion, now: dt.datetime | None
    ) -> Persisted | errors.PipelineError:
        """One run of a batch the server gave up on; None (lost) if it gives up on it again."""
        try:
            return (await self.complete_many([run], now=now))[0]
        except errors.DatabaseUnavailable as exc:
            if not isinstance(exc.__cause__, db.STATEMENT_GAVE_UP):
                raise
            return None

    async def fail(
        self,
        guard: Guard,
        *,
        code: str,
        stage: str,
        message: str,
        stages: Sequence[models.StageTiming],
        diagnostics: Mapping[str, Any],
        full_payload: Mapping[str, Any] | None,
        now: dt.datetime | None = None,
    ) -> str | None:
        """End a run as failed (or cancelled, when a cancel was asked meanwhile), with the
        outbox row when it has a callback; returns the status written, None when lost."""
        row = await self._fetchrow(
            "fail_job",
            guard.job_id,
            guard.worker_id,
            guard.attempts,
            now,
            code,
            stage,
            storable.text(message[: errors.MAX_ERROR_MESSAGE]),
            _timings(stages),
            dict(diagnostics),
            dict(full_payload) if full_payload is not None else None,
        )
        return str(row["status"]) if row is not None else None

    async def cancel_claimed(
        self,
        guard: Guard,
        *,
        stages: Sequence[models.StageTiming],
        diagnostics: Mapping[str, Any],
        now: dt.datetime | None = None,
    ) -> bool:
        """End a run as cancelled (at a stage boundary, or its stage cut off)."""
        row = await self._fetchrow(
            "cancel_claimed_job",
            guard.job_id,
            guard.worker_id,
            guard.attempts,
            now,
            _timings(stages),
            dict(diagnostics),
        )
        return row is not None

    async def release(self, guard: Guard) -> Literal["released", "cancelled"] | None:
        """Give a claim back (graceful stop): `released`, pending again with the attempt not
        counted, or `cancelled` when a cancel was asked meanwhile; None when not ours."""
        row = await self._fetchrow("release_job", guard.job_id, guard.worker_id, guard.attempts)
        if row is None:
            return None
        return "cancelled" if row["status"] == "cancelled" else "released"

    async def rescue_expired(
        self, *, max_attempts: int, now: dt.datetime | None = None
    ) -> tuple[list[Rescued], list[Unrescued]]:
        """Take back jobs whose lease expired (see the `rescue_expired` query).

        All in one statement; if the database refuses that statement (a row an operator's
        trigger or constraint rejects), each job is taken back in its own, so one row cannot
        keep the others processing. Returns the jobs taken back and those refused.
        """
        try:
            rows = await self._fetch("rescue_expired", now, max_attempts, None)
        except asyncpg.PostgresError:
            pass
        else:
            return [_row(r, Rescued) for r in rows], []
        rescued: list[Rescued] = []
        refused: list[Unrescued] = []
        for found in await self._fetch("expired_job_ids", now):
            job_id = found["job_id"]
            try:
                rows = await self._fetch("rescue_expired", now, max_attempts, job_id)
            except asyncpg.PostgresError as exc:
                refused.append(Unrescued(job_id, f"{type(exc).__name__}: {exc}"))
            else:
                rescued.extend(_row(r, Rescued) for r in rows)
        return rescued, refused

    async def vocabulary(self, owner: str, limit: int = 50) -> list[str]:
        """The owner's most used result tags."""
        return [r["tag"] for r in await self._fetch("owner_vocabulary", owner, limit)]

    async def known_tags(self, owner: str, tags: Iterable[str]) -> set[str]:
        """Which of `tags` the owner used before."""
        return {r["tag"] for r in await self._fetch("owner_known_tags", owner, list(tags))}

    # -- reading and control --------------------------------------------------------------

    async def job(self, job_id: uuid.UUID, *, owner: str | None) -> models.Job | None:
        """One job if visible to `owner` (None: admin)."""
        row = await self._fetchrow("job_by_id", job_id, owner)
        return _job(row) if row else None

    async def callback(self, job_id: uuid.UUID) -> models.Callback | None:
        """The delivery state of a job's callback event."""
        row = await self._fetchrow("callback_of_job", job_id)
        return _row(row, models.Callback) if row else None

    async def content(self, content_id: uuid.UUID, *, owner: str | None) -> models.Content | None:
        """One content item if visible to `owner` (None: admin)."""
        row = await self._fetchrow("content_by_id", content_id, owner)
        return _content(row) if row else None

    async def request_cancel(
        self,
        job_id: uuid.UUID,
        *,
        owner: str | None,
        actor: Actor | None = None,
        now: dt.datetime | None = None,
    ) -> CancelOutcome | None:
        """Cancel a pending job, flag a processing one; None when not visible. With an
        `actor`, the `audit.cancellation` event is stored in the same transaction."""
        if actor is None:
            row = await self._fetchrow("request_cancel", job_id, owner, now)
            return _row(row, CancelOutcome) if row else None
        async with self._audited() as (conn, events):
            row = await conn.fetchrow(self._q["request_cancel"], job_id, owner, now)
            if row is None:
                return None
            outcome = _row(row, CancelOutcome)
            events.append(
                actor.did(
                    "audit.cancellation",
                    owner=outcome.owner,
                    subject=job_id,
                    outcome=outcome.result,
                    previous_status=outcome.previous,
                )
            )
        return outcome

    async def reprocess(
        self,
        content_id: uuid.UUID,
        *,
        owner: str | None,
        force: bool,
        pipeline_version: str,
        callback_url: str | None,
        data_tier: models.DataTier,
        transcript: str | None,
        actor: Actor | None = None,
    ) -> Reprocessed | None:
        """Start a new run of known content unless one is active or it is current; None: unseen.
        With an `actor`, the `audit.reprocess_trigger` event is stored in the same transaction.

        The content row is locked for the decision; the partial unique index on active jobs
        is the last word when two requests race anyway.
        """
        async with self._audited() as (conn, events):

            async def decide() -> Reprocessed | None:
                content = await conn.fetchrow(self._q["lock_content"], content_id, owner)
                if content is None:
                    return None
                active = await conn.fetchrow(self._q["active_job_of_content"], content_id)
                if active is not None:
                    return Reprocessed(
                        "already_active", active["job_id"], content["content_id"], content["owner"]
                    )
                current = content["pipeline_version"] == pipeline_version
                if content["processing_status"] == "completed" and current and not force:
                    return Reprocessed(
                        "already_completed", None, content["content_id"], content["owner"]
                    )
                job_id = await conn.fetchval(
                    self._q["insert_reprocess_job"],
                    models.new_id(),
                    content_id,
                    content["owner"],
                    content["resource_key"],
                    data_tier,
                    callback_url,
                    pipeline_version,
                    transcript,
                )
                if job_id is None:
                    active = await conn.fetchrow(self._q["active_job_of_content"], content_id)
                    return Reprocessed(
                        "already_active",
                        active["job_id"] if active else None,
                        content["content_id"],
                        content["owner"],
                    )
                return Reprocessed("submitted", job_id, content["content_id"], content["owner"])

            outcome = await decide()
            if outcome is not None and actor is not None:
                events.append(
                    actor.did(
                        "audit.reprocess_trigger",
                        owner=outcome.owner,
                        subject=content_id,
                        outcome=outcome.status,
                        job_id=outcome.job_id,
                        force=force,
                    )
                )
        return outcome

    async def list_jobs(
        self,
        *,
        owner: str | None,
        status: str | None,
        content_id: uuid.UUID | None,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> Page[models.Job]:
        """Jobs newest first, strictly after the `after` key (keyset pagination)."""
        rows = await self._fetch_planned(
            "list_jobs", owner, status, content_id, *(after or (None, None)), limit + 1
        )
        items = [_row(r, models.Job) for r in rows[:limit]]
        last = (items[-1].created_at, items[-1].job_id) if len(rows) > limit else None
        return Page(items=items, last=last)

    async def list_content(
        self,
        *,
        owner: str | None,
        status: str | None,
        content_type: str | None,
        tag: str | None,
        result_tag: str | None,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> Page[models.Content]:
        """Content newest first, strictly after the `after` key (keyset pagination), without
        bodies and results (null). `tag` matches a submitter tag as it is; `result_tag` (the
        filter in the form result tags are kept in) matches one of the result's tags."""
        rows = await self._fetch_planned(
            "list_content",
            owner,
            status,
            content_type,
            tag,
            *(after or (None, None)),
            limit + 1,
            result_tag,
        )
        items = [_content(r) for r in rows[:limit]]
        last = (items[-1].created_at, items[-1].content_id) if len(rows) > limit else None
        return Page(items=items, last=last)

    async def export_page(
        self, *, owner: str | None, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
    ) -> Page[models.Content]:
        """Completed content with a result, newest first after `after`, without bodies."""
        rows = await self._fetch_planned(
            "export_content", owner, *(after or (None, None)), limit + 1
        )
        items = [_content(r) for r in rows[:limit]]
        last = (items[-1].created_at, items[-1].content_id) if len(rows) > limit else None
        return Page(items=items, last=last)

    async def contents_by_resource_key(
        self, resource_key: str, *, owner: str | None
    ) -> list[models.Content]:
        """Content with this resource key (one per owner), optionally of one owner."""
        rows = await self._fetch("contents_by_resource_key", resource_key, owner)
        return [_content(r) for r in rows]

    async def classify_candidates(
        self,
        *,
        owner: str | None,
        content_type: str | None,
        status: str | None,
        stale: bool,
        pipeline_version: str,
        after: uuid.UUID | None,
        limit: int,
    ) -> list[tuple[models.ContentId, str, bool]]:
        """(content id, owner, current) of items `classify` would re-run, by id after `after`;
        with `stale`, also those completed by a version older than `pipeline_version` (compared
        part by part as numbers; none is older than a version that is not dotted numbers).
        `current`: completed by `pipeline_version` when listed."""
        parts = pipeline_version.split(".") if _DOTTED_NUMBERS.fullmatch(pipeline_version) else None
        rows = await self._fetch_planned(
            "classify_candidates", owner, content_type, status, stale, parts, after, limit
        )
        return [
            (
                r["content_id"],
                r["owner"],
                r["processing_status"] == "completed" and r["pipeline_version"] == pipeline_version,
            )
            for r in rows
        ]

    async def audit(
        self,
        event: str,
        *,
        owner: str | None,
        actor_key_id: uuid.UUID | None,
        subject: uuid.UUID | None,
        detail: Mapping[str, Any],
    ) -> None:
        """Store an audit event, then log it."""
        stored = AuditEvent(
            event=event,
            owner=owner,
            actor_key_id=actor_key_id,
            subject=subject,
            detail=dict(detail),
        )
        async with self._conn() as conn:
            await self._store_audit(conn, stored)
        _log_audit(stored)

    @contextlib.asynccontextmanager
    async def _audited(
        self,
    ) -> AsyncIterator[tuple[asyncpg.pool.PoolConnectionProxy[Any], list[AuditEvent]]]:
        """A transaction, and the audit events it adds: they are stored in it, and logged once
        it has committed (never for an action that did not happen)."""
        events: list[AuditEvent] = []
        async with self._conn() as conn, conn.transaction():
            yield conn, events
            for event in events:
                await self._store_audit(conn, event)
        for event in events:
            _log_audit(event)

    async def _store_audit(
        self, conn: asyncpg.pool.PoolConnectionProxy[Any], event: AuditEvent
    ) -> None:
        await conn.execute(
            self._q["insert_audit_event"],
            event.event,
            event.owner,
            event.actor_key_id,
            event.subject,
            event.detail,
        )

    # -- keys and owners ------------------------------------------------------------------

    async def create_key(
        self,
        owner: str,
        role: models.Role,
        *,
        hand_over: Callable[[CreatedKey], None] = lambda _: None,
    ) -> CreatedKey:
        """A new API key for `owner` (created with its webhook secret if new). `hand_over`
        gets it before the commit: if it raises, no key is made (its secret was not kept)."""
        if not OWNER_NAME.fullmatch(owner):
            raise errors.InvalidInput("owner", OWNER_NAME_RULE)
        api_key = "menos_" + secrets.token_urlsafe(32)
        key_id = models.new_id()
        async with self._conn() as conn, conn.transaction():
            secret = await conn.fetchval(self._q["ensure_owner"], owner, new_webhook_secret())
            await conn.execute(self._q["insert_api_key"], key_id, owner, role, hash_key(api_key))
            created = CreatedKey(
                key_id=key_id, owner=owner, role=role, api_key=api_key, webhook_secret=secret
            )
            hand_over(created)
        return created

    async def principal(self, api_key: str) -> models.Principal | None:
        """Who a presented key belongs to; None when unknown or revoked."""
        row = await self._fetchrow("principal_by_hash", hash_key(api_key))
        return _row(row, models.Principal) if row else None

    async def list_keys(self, owner: str | None) -> list[models.ApiKey]:
        """Every key (never the key itself), optionally of one owner."""
        return [_row(r, models.ApiKey) for r in await self._fetch("list_api_keys", owner)]

    async def revoke_key(self, key_id: uuid.UUID) -> bool:
        """Revoke a key; False when unknown or already revoked."""
        return await self._fetchrow("revoke_api_key", key_id) is not None

    async def rotate_secret(
        self,
        owner: str,
        now: dt.datetime | None = None,
        *,
        hand_over: Callable[[str], None] = lambda _: None,
    ) -> Rotation | None:
        """A new webhook secret for `owner`; the previous one signs too for 24 h. `hand_over`
        gets it before the commit: if it raises, the secret is not changed. None: no owner.

        There is one previous secret: a rotation within 24 h of the last one drops the secret
        before it at once, and says until when that one would have signed."""
        secret = new_webhook_secret()
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                self._q["rotate_owner_secret"], owner, secret, SECRET_OVERLAP, now
            )
            if row is None:
                return None
            hand_over(secret)
        return Rotation(secret, row["dropped_secret_expired_at"])

    # -- maintenance ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def leader(self, duty: str) -> AsyncIterator[bool]:
        """Hold the advisory lock of a periodic duty for the block; yields False if taken."""
        async with self._conn() as conn:
            held = bool(await conn.fetchval(self._q["try_leader_lock"], duty))
            try:
                yield held
            finally:
                if held:
                    await conn.fetchval(self._q["release_leader_lock"], duty)

    async def database_now(self) -> dt.datetime:
        """The database's clock (retention is measured on it, as every time it stamps)."""
        row = await self._fetchrow("database_now")
        assert row is not None
        now: dt.datetime = row[0]
        return now

    async def purge_jobs(
        self, before: dt.datetime, full_before: dt.datetime, batch: int
    ) -> tuple[int, int]:
        """One batch of expired jobs deleted: (jobs, full payloads finished before
        `full_before` they took with them); fewer jobs than `batch`: done."""
        rows = await self._fetch("purge_jobs", before, batch, full_before)
        return len(rows), sum(1 for row in rows if row["took_payload"])

    async def purge_batch(
        self,
        kind: Literal["full_payloads", "audit_events"],
        before: dt.datetime,
        batch: int,
    ) -> int:
        """One batch of one purge step; returns rows touched (fewer than `batch`: done)."""
        match kind:
            case "full_payloads":
                rows = await self._fetch("purge_full_payloads", before, batch)
            case "audit_events":
                rows = await self._fetch("purge_audit_events", before, batch)
        return len(rows)

    async def purge_preview(
        self, jobs_before: dt.datetime, full_before: dt.datetime, quiet_since: dt.datetime
    ) -> PurgeCounts:
        """What a purge would remove now."""
        row = await self._fetchrow("purge_preview", jobs_before, full_before, quiet_since)
        assert row is not None
        return _row(row, PurgeCounts)

    # -- metrics --------------------------------------------------------------------------

    async def metric_totals(self) -> list[MetricTotal]:
        """Every flushed metric summed over processes."""
        return [_row(r, MetricTotal) for r in await self._fetch("metric_totals")]

    async def active_status_counts(self) -> list[StatusCount]:
        """Pending and processing jobs, with the oldest pending job's age."""
        return [_row(r, StatusCount) for r in await self._fetch("active_job_counts")]

    async def finished_status_counts(self) -> list[StatusCount]:
        """Completed, failed and cancelled jobs: a read of the whole table."""
        return [_row(r, StatusCount) for r in await self._fetch("finished_job_counts")]


OutboxStatus = Literal["pending", "delivered", "failed"]

AUDIT_EVENT = "audit.callback_delivery"


class Swept(msgspec.Struct, frozen=True, kw_only=True):
    """An event ended failed because its last attempt was counted but never recorded."""

    event_id: uuid.UUID
    job_id: models.JobId
    owner: models.Owner
    url: str
    attempts: int
    last_error: str


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed event and the secrets that sign it now (empty: its owner is gone); with the
    previous attempt when the claim found it lost (counted, its outcome never recorded)."""

    event: models.OutboxEvent
    secrets: list[str]
    lost_attempt: int | None = None
    lost_error: str | None = None


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """What one claim took, and seconds until another event may be due (None: it took none)."""

    events: list[Claimed]
    next_due_in: float | None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one attempt of a claimed event ended: delivered when `error` is None."""

    event: models.OutboxEvent
    counted: bool  # by count_attempts as its request went out; else this records the count
    status_code: int | None
    error: str | None
    duration_ms: float
    max_attempts: int | None = None  # a failure of this attempt ends the event `failed`
    backoff_s: float | None = None  # a failure is retried backoff_s * 4^(attempt - 1) s later
    now: dt.datetime | None = None  # when it ended; None: the database's now()

    def __post_init__(self) -> None:
        if self.error is not None and (self.max_attempts is None or self.backoff_s is None):
            raise ValueError("a failed attempt needs max_attempts and backoff_s")


class OutboxRepository(_Store):
    """Named outbox queries over one asyncpg pool.

    A claim holds an event for one attempt; the attempt counts, in its own committed
    statement, as its request starts going out, or when its failure to connect is recorded.
    Every write after a claim is guarded by (event_id, attempts, pending): a None or False
    answer means the event moved on (claimed again after its hold ran out, or ended) and
    nothing was written. Each recorded attempt and its `audit.callback_delivery` row are one
    transaction.
    """

    async def claim_signed(
        self,
        limit: int,
        *,
        max_attempts: int,
        hold_s: float,
        now: dt.datetime | None = None,
        excluding: Sequence[str] = (),
    ) -> Claim:
        """Claim up to `limit` due events for one attempt each (several claimers are safe).

        Each event is held for `hold_s` seconds (at least the attempt's timeout) and comes
        with the number of the attempt being made, not yet counted, and the secrets that sign
        it now. When it claims anything, the claim also tells what `next_due_in` would after it.
        A previous attempt whose outcome was never recorded gets its `lost` audit row here.
        Events of the owners in `excluding` are not claimed.
        """
        async with self._conn() as conn:
            rows = await conn.fetch(
                self._q["claim_outbox_events"],
                now,
                limit,
                max_attempts,
                hold_s,
                AUDIT_EVENT,
                list(excluding),
            )
        return Claim(
            events=[
                Claimed(
                    event=_row(r, models.OutboxEvent),
                    secrets=[s for s in (r["webhook_secret"], r["previous_webhook_secret"]) if s],
                    lost_attempt=r["lost_attempt"],
                    lost_error=r["last_error"] if r["lost_attempt"] is not None else None,
                )
                for r in rows
            ],
            next_due_in=rows[0]["next_due_in"] if rows else None,
        )

    async def count_attempts(
        self,
        events: Sequence[models.OutboxEvent],
        *,
        max_attempts: int,
        backoff_s: float,
        hold_s: float,
        now: dt.datetime | None = None,
    ) -> list[bool]:
        """Count claimed attempts whose requests are about to go out, in one committed statement.

        Each is held `hold_s` seconds, before the last attempt also at least the next backoff,
        so a sender that dies now is followed no sooner than a recorded failure would be. An
        answer per event, in order: False when it moved on (its request must not be sent).
        """
        if not events:
            return []
        async with self._conn() as conn:
            rows = await conn.fetch(
                self._q["count_outbox_attempts"],
                [e.event_id for e in events],
                [e.attempts for e in events],
                now,
                backoff_s,
                hold_s,
                max_attempts,
            )
        # The same event twice in one group (claimed again by its own dispatcher after its
        # hold ran out) is counted once: only the first of them may send.
        counted = {r["event_id"] for r in rows}
        answers = []
        for event in events:
            answers.append(event.event_id in counted)
            counted.discard(event.event_id)
        return answers

    async def record_outcomes(
        self, outcomes: Sequence[Outcome]
    ) -> list[OutboxStatus | errors.Refused | None]:
        """Record many attempts' outcomes in one statement; each one's status, in order.

        Each outcome is guarded on its own (a None status: that event moved on) and leaves its
        `audit.callback_delivery` row; all of them commit together. When the database refuses
        the group, each outcome is recorded alone, so one it refuses (answered `Refused`; its
        event stays held and is attempted again) keeps none of the others from being recorded.
        """
        if not outcomes:
            return []
        rows = [_outcome_row(i, outcome) for i, outcome in enumerate(outcomes)]
        try:
            async with self._conn() as conn:
                found = await conn.fetch(self._q["record_outbox_outcomes"], rows, AUDIT_EVENT)
        except asyncpg.PostgresError as exc:
            if len(outcomes) == 1:
                return [errors.Refused(f"outcome not recorded: {exc}")]
            return [(await self.record_outcomes([one]))[0] for one in outcomes]
        except errors.DatabaseUnavailable as exc:
            # The server gave up on the group (one outcome waited for a held event row): the
            # others are recorded all the same, not delivered again.
            if len(outcomes) == 1 or not isinstance(exc.__cause__, db.STATEMENT_GAVE_UP):
                raise
            return [await self._record_alone(one) for one in outcomes]
        statuses: list[OutboxStatus | errors.Refused | None] = [r["status"] for r in found]
        assert len(statuses) == len(outcomes)
        return statuses

    async def _record_alone(self, outcome: Outcome) -> OutboxStatus | errors.Refused | None:
        """One outcome of a group the server gave up on; Refused if it gives up on it again."""
        try:
            return (await self.record_outcomes([outcome]))[0]
        except errors.DatabaseUnavailable as exc:
            if not isinstance(exc.__cause__, db.STATEMENT_GAVE_UP):
                raise
            return errors.Refused(f"outcome not recorded: {exc}")

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

    async def next_due_in(self, *, now: dt.datetime | None = None) -> float | None:
        """Seconds until the earliest pending event is due (≤ 0: due now); None when none waits.

        Measured on the database's clock, so dispatcher clocks may drift freely.
        """
        async with self._conn() as conn:
            seconds: float | None = await conn.fetchval(self._q["outbox_next_due_in"], now)
        return seconds


def _outcome_row(i: int, outcome: Outcome) -> dict[str, Any]:
    """One element of `record_outbox_outcomes`' array; `detail` is the audit row's, less status."""
    event = outcome.event
    error = (
        None if outcome.error is None else storable.text(outcome.error[: errors.MAX_ERROR_MESSAGE])
    )
    return {
        "i": i,
        "event_id": str(event.event_id),
        "attempts": event.attempts,
        "counted": outcome.counted,
        "status_code": outcome.status_code,
        "error": error,
        "at": None if outcome.now is None else outcome.now.isoformat(),
        "max_attempts": outcome.max_attempts,
        "backoff_s": outcome.backoff_s,
        "owner": event.owner,
        "job_id": str(event.job_id),
        "detail": {
            "event_id": str(event.event_id),
            "url": event.url,
            "attempt": event.attempts,
            "outcome": "delivered" if error is None else "failed",
            "status_code": outcome.status_code,
            "error": error,
            "duration_ms": outcome.duration_ms,
        },
    }


def _log_audit(event: AuditEvent) -> None:
    log.info(
        event.event,
        owner=event.owner,
        actor_key_id=str(event.actor_key_id) if event.actor_key_id else None,
        subject=str(event.subject) if event.subject else None,
        **event.detail,
    )

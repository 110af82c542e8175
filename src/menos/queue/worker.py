"""The worker: claims jobs with SKIP LOCKED, runs the pipeline in N slots, heartbeats leases."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import msgspec
import structlog

from menos import errors
from menos.pipeline import stages
from menos.queue import group_commit, models, notify, repository, rescuer, stats

log = structlog.get_logger("menos.worker")
T = TypeVar("T")


async def shielded(write: Awaitable[T]) -> T:
    """`write` shielded from a cancel of its caller. When the caller is cancelled meanwhile
    (a stop's deadline), the write goes on alone and its outcome is read when it ends, so
    its failure (the database away) is not logged by asyncio as an error "never retrieved",
    without a job: the caller has already logged the job as lost."""
    task = asyncio.ensure_future(write)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(task)


CHANNEL_JOBS = "menos_jobs"
CHANNEL_CANCEL = "menos_cancel"
VOCABULARY_TTL_S = 10.0
KNOWN_TAGS_TTL_S = 60.0  # an owner's known tags are forgotten then: memory, not truth
# A completion still being written after this long waits on a row another transaction holds
# (an operator's open psql session): the worker's next completions no longer wait behind it.
COMPLETION_STALL_S = 1.0


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one worker process behaves."""

    worker_id: str
    concurrency: int
    max_processing: int
    lease_s: float
    max_attempts: int
    poll_s: float
    shutdown_grace_s: float
    pipeline_version: str
    default_full_tier: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_processing < 1:
            raise ValueError("concurrency and max_processing must be >= 1")
        if self.lease_s <= 0 or self.poll_s <= 0 or self.shutdown_grace_s <= 0:
            raise ValueError("lease_s, poll_s and shutdown_grace_s must be > 0")


class _Slot(stages.Port):
    """One claimed job being run: the pipeline's port onto the queue."""

    def __init__(self, worker: Worker, claimed: models.Claimed, ctx: stages.Context) -> None:
        job = claimed.job
        self.worker = worker
        self.claimed = claimed
        self.guard = repository.Guard(job.job_id, worker.config.worker_id, job.attempts)
        self.run = stages.Run(full=job.data_tier == "full", clock=ctx.clock)
        self.cancel_requested = job.cancel_requested_at is not None
        self._interruptible: asyncio.Future[None] | None = None  # the stage a cancel cuts off
        self.lost = False
        self.held_until = time.monotonic() + worker.config.lease_s
        self.releasing = False
        # The completion once submitted: it is written even when the run is cut off.
        self.persisting: asyncio.Future[repository.Persisted | errors.PipelineError] | None = None

    async def boundary(self, stage: stages.Stage) -> None:
        if self.lost or time.monotonic() > self.held_until:
            raise stages.Lost()
        if self.cancel_requested:
            raise stages.Cancelled()

    async def interruptible(self, work: Coroutine[Any, Any, None]) -> None:
        self._interruptible = asyncio.ensure_future(work)
        try:
            await self._interruptible
        except asyncio.CancelledError:
            running = asyncio.current_task()
            # Cut off by ask_cancel, not by a stop (which cancels this task too): ends here.
            if self.cancel_requested and running is not None and not running.cancelling():
                raise stages.Cancelled() from None
            raise
        finally:
            self._interruptible = None

    def ask_cancel(self) -> None:
        """A cancel was asked: the stage waiting on the network stops now, else the next
        boundary ends the run."""
        self.cancel_requested = True
        if self._interruptible is not None:
            self._interruptible.cancel()

    async def save_fetched(self, body: str, title: str | None, metadata: dict[str, Any]) -> None:
        # Shielded: a cancel cutting the fetch off leaves this write whole, not half-sent.
        if self.lost or not await shielded(
            self.worker.repo.save_fetched(self.guard, body=body, title=title, metadata=metadata)
        ):
            raise stages.Lost()

    async def vocabulary(self) -> list[str]:
        return await self.worker.vocabulary(self.claimed.job.owner)

    async def known_tags(self, tags: list[str]) -> set[str]:
        return await self.worker.known_tags(self.claimed.job.owner, tags)

    async def persist(self, result: dict[str, Any], tags: list[str]) -> None:
        if self.lost:
            raise stages.Lost()
        self.persisting = asyncio.ensure_future(
            self.worker.completions.submit(
                repository.Completion(
                    guard=self.guard,
                    result=result,
                    tags=tags,
                    stages=self.timings(close=True),
                    diagnostics=self.run.diagnostics,
                    full_payload=self.run.full_payload,
                )
            )
        )
        outcome = await shielded(self.persisting)
        if isinstance(outcome, errors.PipelineError):
            raise outcome
        if outcome is None:
            raise stages.Lost()
        if outcome == "cancelled":  # asked while it persisted: ended cancelled, no result
            raise stages.Cancelled(ended=True)
        self.worker.learn_tags(self.claimed.job.owner, tags)

    async def give_back(self) -> str:
        """The outcome of a run cut off by a stop. A completion already submitted is written
        all the same, so its answer is the outcome; else the claim is released: `released`,
        `cancelled`, or `lost` when that was not written (the database is away, or the job
        is no longer ours) and its lease gives it back, with the attempt counted."""
        if self.persisting is not None:
            answer = await shielded(self.persisting)
            if isinstance(answer, str):  # completed, or cancelled when asked meanwhile
                return answer
        return await shielded(self.worker.repo.release(self.guard)) or "lost"

    def timings(self, *, close: bool = False) -> list[models.StageTiming]:
        """Stage timings so far; `close` ends the running stage now (for the final write)."""
        rows = list(self.run.stages)
        if close and rows and rows[-1]["finished_at"] is None:
            started: dt.datetime = rows[-1]["started_at"]
            finished = dt.datetime.now(dt.UTC)
            rows[-1] = {
                **rows[-1],
                "finished_at": finished,
                "duration_ms": round((finished - started).total_seconds() * 1000, 3),
            }
        return [msgspec.convert(row, models.StageTiming) for row in rows]


class Worker:
    """Claims and runs jobs until stopped; then lets running jobs finish within the grace."""

    def __init__(
        self,
        config: WorkerConfig,
        repo: repository.Repository,
        ctx: stages.Context,
        *,
        dsn: str,
        duties: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        self.config = config
        self.repo = repo
        self.ctx = ctx
        self._dsn = dsn
        self._duties = duties
        self.stats = stats.ProcessStats()
        self._stats_out = stats.Flusher(repo, config.worker_id, self.stats)
        self._vocabularies: dict[str, tuple[float, list[str]]] = {}
        self._known_tags: dict[str, tuple[float, set[str]]] = {}
        self._slots: dict[models.JobId, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()  # a claim may find something: a job ended, NOTIFY, ...
        self._database_back = asyncio.Event()  # the LISTEN connection (re)connected, NOTIFY
        # Jobs finishing together are persisted in one transaction: one commit, not one each.
        self.completions = group_commit.GroupCommit(
            self.repo.complete_many, max_batch=config.concurrency, stall_s=COMPLETION_STALL_S
        )

    # -- claiming ---------------------------------------------------------------------------

    async def run_once(self, now: dt.datetime | None = None) -> int:
        """Claim into the free slots and start the jobs; returns how many were claimed."""
        free = self.config.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        claimed = await self.repo.claim(
            self.config.worker_id,
            free,
            max_processing=self.config.max_processing,
            lease_s=self.config.lease_s,
            pipeline_version=self.config.pipeline_version,
            now=now,
        )
        for item in claimed:
            slot = _Slot(self, item, self.ctx)
            older = self._slots.get(item.job.job_id)
            if older is not None:
                # A server crash lost the claim of a run still going here (claims commit
                # without waiting for their flush), and this worker claimed the job again:
                # both runs hold the same guard, so the older one stops without writing.
                older.lost = True
            self._slots[item.job.job_id] = slot
            task = asyncio.create_task(self._run_job(slot), name=f"job-{item.job.job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._job_done)
        return len(claimed)

    async def vocabulary(self, owner: str) -> list[str]:
        """The owner's preferred tags, read at most every VOCABULARY_TTL_S per owner: a hint to
        the analyzer, so a few seconds of staleness is harmless and saves a query per job."""
        cached = self._vocabularies.get(owner)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        tags = await self.repo.vocabulary(owner)
        self._vocabularies[owner] = (time.monotonic() + VOCABULARY_TTL_S, tags)
        return tags

    async def known_tags(self, owner: str, tags: list[str]) -> set[str]:
        """Which of `tags` the owner used before; only tags not yet known to be used are read.

        An owner's tag, once used, stays used (`owner_tag` only counts up), so what the database
        answered and what this worker persisted is kept per owner for up to KNOWN_TAGS_TTL_S.
        An owner who keeps to their tags costs about one query a minute per worker.
        """
        known = self._known_tag_set(owner)
        unknown = [tag for tag in tags if tag not in known]
        if unknown:
            known.update(await self.repo.known_tags(owner, unknown))
        return {tag for tag in tags if tag in known}

    def learn_tags(self, owner: str, tags: Sequence[str]) -> None:
        """Remember tags this worker has just persisted for `owner` (so they are used now)."""
        self._known_tag_set(owner).update(tags)

    def _known_tag_set(self, owner: str) -> set[str]:
        """The owner's set of tags known to be used, started afresh once it is too old."""
        now = time.monotonic()
        cached = self._known_tags.get(owner)
        if cached is None or cached[0] <= now:
            # Owners that stopped coming are forgotten here too, so memory follows the
            # owners of the last minute, not every owner ever seen.
            self._known_tags = {o: c for o, c in self._known_tags.items() if c[0] > now}
            cached = (now + KNOWN_TAGS_TTL_S, set())
            self._known_tags[owner] = cached
        return cached[1]

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def drain(self) -> None:
        """Wait for every running job (tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run(self, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
        """The worker loop: claim, wait for NOTIFY or the poll interval, repeat until stop.

        Then running jobs get the grace period to finish, cut short once `hurry` is set.
        """
        log.info(
            "worker_started", worker_id=self.config.worker_id, concurrency=self.config.concurrency
        )
        background = [
            asyncio.create_task(self._listen(stop), name="listen"),
            asyncio.create_task(self._heartbeat(stop), name="heartbeat"),
            asyncio.create_task(
                rescuer.Rescuer(
                    self.repo,
                    max_attempts=self.config.max_attempts,
                    interval_s=self.config.lease_s / 3,
                ).run(stop),
                name="rescuer",
            ),
            *(asyncio.create_task(duty(stop)) for duty in self._duties),
        ]
        outage = notify.Backoff(
            self.config.poll_s,
            failed="claim_database_unavailable",
            recovered="claim_database_available",
        )
        faults = notify.Backoff(
            self.config.poll_s, failed="claim_failed", recovered="claim_recovered", unexpected=True
        )
        try:
            while not stop.is_set():
                self._wake.clear()
                self._database_back.clear()  # seen back while this claim waits: it counts
                wait = self.config.poll_s
                try:
                    claimed = await self.run_once()
                except errors.DatabaseUnavailable as exc:
                    # Not again before the backoff's wait, unless the database is seen back:
                    # a job ending meanwhile would claim (and count a failure) at once.
                    wait = outage.failed(exc)
                    await notify.first(self._database_back.wait(), stop.wait(), timeout=wait)
                    continue
                except Exception as exc:
                    # An error that stays (a previous version's claim on a migrated schema)
                    # is not tried again before the backoff's wait, neither at a NOTIFY nor
                    # at a job's end.
                    await notify.first(stop.wait(), timeout=faults.failed(exc))
                    continue
                else:
                    outage.succeeded()
                    faults.succeeded()
                if claimed and len(self._tasks) < self.config.concurrency:
                    continue  # there may be more waiting
                await notify.first(self._wake.wait(), stop.wait(), timeout=wait)
            await self._shutdown(hurry or asyncio.Event())
            await self.completions.close()
            await self._stats_out.retire()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        log.info("worker_stopped", worker_id=self.config.worker_id)

    async def _shutdown(self, hurry: asyncio.Event) -> None:
        if not self._tasks:
            return
        log.info("worker_stopping", running=len(self._tasks), grace_s=self.config.shutdown_grace_s)
        tasks = list(self._tasks)
        await notify.first(asyncio.wait(tasks), hurry.wait(), timeout=self.config.shutdown_grace_s)
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)

    # -- background duties ------------------------------------------------------------------

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        # At least every second: keeps `current_stage` near-live for watchers, and a lease
        # is still renewed three times within its length.
        interval = min(self.config.lease_s / 3, 1.0)
        while True:
            await asyncio.sleep(interval)
            slots = [slot for slot in self._slots.values() if not slot.lost]
            if not slots:
                await self._stats_out.flush()
                continue
            await self._stats_out.flush()
            sent_at = time.monotonic()
            try:
                held = await self.repo.heartbeat(
                    self.config.worker_id,
                    [(slot.guard, slot.run.current, slot.timings()) for slot in slots],
                    lease_s=self.config.lease_s,
                )
            except Exception as exc:
                log.warning("heartbeat_failed", error=str(exc))
                continue
            for slot in slots:
                beat = held.get(slot.guard.job_id)
                if beat is None:
                    slot.lost = True
                    continue
                if beat.renewed:
                    slot.held_until = sent_at + self.config.lease_s
                if beat.cancel_requested and not slot.cancel_requested:
                    slot.ask_cancel()

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for new jobs and cancellations; reconnect after any connection loss."""
        await notify.listen(
            self._dsn,
            {CHANNEL_JOBS: self._on_jobs, CHANNEL_CANCEL: self._on_cancel},
            on_connect=self._database_seen,
            stop=stop,
            retry_s=self.config.poll_s,
        )

    def _database_seen(self) -> None:
        self._database_back.set()
        self._wake.set()

    def _on_jobs(self, *_args: object) -> None:
        self._database_seen()

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            slot = self._slots.get(models.JobId(uuid.UUID(str(payload))))
            if slot is not None:
                slot.ask_cancel()

    # -- one job ----------------------------------------------------------------------------

    async def _run_job(self, slot: _Slot) -> None:
        job, content = slot.claimed.job, slot.claimed.content
        structlog.contextvars.bind_contextvars(
            job_id=str(job.job_id),
            content_id=str(content.content_id),
            worker_id=self.config.worker_id,
        )
        started = time.perf_counter()
        outcome = "completed"
        stage_failed = False  # the running stage ended in a failure (else it was cut off)
        log.info("job_claimed", attempts=job.attempts, content_type=content.content_type)
        item = stages.Item(
            owner=content.owner,
            content_type=content.content_type,
            resource_key=content.resource_key,
            source_url=content.source_url,
            title=content.title,
            tags=content.tags,
            body=content.body,
            source_metadata=content.source_metadata,
        )
        try:
            await stages.run_pipeline(item, slot, self.ctx, slot.run)
        except stages.Cancelled as cancelled:
            outcome = "cancelled"
            # Shielded, as every terminal write here: a shutdown's cancel arriving meanwhile
            # must not leave the job processing (the release below would not run). A stage
            # the cancel cut off stays unfinished in the record: it was not done.
            if not cancelled.ended and not await shielded(
                self.repo.cancel_claimed(
                    slot.guard, stages=slot.timings(), diagnostics=slot.run.diagnostics
                )
            ):
                outcome = "lost"
        except stages.Lost:
            outcome = "lost"
        except errors.PipelineError as exc:
            stage_failed = True
            outcome = await self._fail(slot, exc.code, exc.message)
        except asyncio.CancelledError:
            outcome = "lost"
            with contextlib.suppress(Exception):
                outcome = await slot.give_back()
            raise
        except errors.DatabaseUnavailable as exc:
            outcome = "lost"  # the lease runs out and the rescuer returns the job
            log.warning("job_database_unavailable", error=str(exc))
        # Not only Exception: an extension's panic (pyo3's PanicException) is a BaseException,
        # and a job whose task died with it stayed processing until its lease ran out, then
        # ran again, to end WORKER_LOST.
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            stage_failed = True
            slot.run.diagnostics["traceback"] = traceback.format_exc()[-4000:]
            log.exception("job_exception")
            outcome = await self._fail(slot, "PIPELINE_EXCEPTION", f"{type(exc).__name__}: {exc}")
        finally:
            if self._slots.get(job.job_id) is slot:
                del self._slots[job.job_id]
            # A stage that failed ended there; one cut off (a stop, a lost lease) did not:
            # its time so far is no stage duration.
            running = slot.run.stages[-1]["finished_at"] is None if slot.run.stages else False
            timings = slot.timings(close=stage_failed)
            for stage in timings:
                if stage.duration_ms is not None:
                    self.stats.observe_stage(stage.name, stage.duration_ms / 1000)
            if stage_failed and running:  # its line, as each stage that succeeded has one
                log.info(
                    "stage_failed", stage=timings[-1].name, duration_ms=timings[-1].duration_ms
                )
            failure = slot.run.diagnostics.get("error") if outcome == "failed" else None
            log.info(
                "job_finished",
                outcome=outcome,
                stage=slot.run.current,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                **({"error_code": failure["code"]} if failure else {}),
            )
            structlog.contextvars.unbind_contextvars("job_id", "content_id", "worker_id")

    async def _fail(self, slot: _Slot, code: str, message: str) -> str:
        """Record the run's failure; returns the outcome (a cancel asked meanwhile wins)."""
        if slot.lost:  # its guard may be another run's now
            log.info("job_lost_before_fail")
            return "lost"
        stage = slot.run.current or "fetch"
        message = errors.one_line(message[: errors.MAX_ERROR_MESSAGE])
        slot.run.diagnostics["error"] = {"code": code, "stage": stage, "message": message}
        try:
            written = await shielded(
                self.repo.fail(
                    slot.guard,
                    code=code,
                    stage=stage,
                    message=message,
                    stages=slot.timings(close=True),
                    diagnostics=slot.run.diagnostics,
                    full_payload=slot.run.full_payload,
                )
            )
        # Not recorded: the lease runs out and the rescuer takes the job back, to run again.
        except errors.DatabaseUnavailable as exc:
            log.warning("job_fail_not_recorded", error=str(exc))
            return "lost"
        except Exception:
            log.exception("job_fail_not_recorded")
            return "lost"
        if written is None:
            log.info("job_lost_before_fail")
            return "lost"
        return written

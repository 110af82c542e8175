"""The dispatcher: delivers the outbox's callback events, signed, at least once (DESIGN §6)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal

import httpcore
import httpx
import msgspec
import structlog

from menos import db, errors, versions
from menos.pipeline import ssrf
from menos.queue import group_commit, models, notify, repository, signing, stats, stopping
from menos.settings import Settings

log = structlog.get_logger("menos.dispatcher")

CHANNEL_OUTBOX = "menos_outbox"
MIN_WAIT_S = 0.05  # never spin: an event due now may be locked by another dispatcher's claim
# How often the delivery counts are stored, whatever poll_s is: about once a second, as a
# worker's stage durations, so a dispatcher killed loses at most that much of them.
FLUSH_S = 1.0
ERROR_SNIPPET_CHARS = 200

Status = repository.OutboxStatus | None  # None: not recorded (the event moved on)
# menos_callback_deliveries_total{outcome} of an attempt by the status it left its event in,
# as its audit row says: so a lost attempt counts once, when it is found lost.
DELIVERY_OUTCOMES: dict[repository.OutboxStatus, str] = {
    "delivered": "delivered",
    "pending": "retry",
    "failed": "failed",
}


class DispatcherConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one dispatcher process behaves; times in seconds."""

    timeout_s: float  # one attempt, from connecting to the last byte read
    backoff_s: float  # before attempt 2; attempt 3 comes 4 times that after attempt 2
    poll_s: float  # the longest sleep between looks at the outbox
    app_version: str  # sent as `user-agent: menos/<version>`
    batch_size: int = 32  # deliveries in flight at once; a claim takes up to the free part
    max_attempts: int = 3
    hold_margin_s: float = 2.0  # a claim holds its event for timeout_s plus this
    max_response_bytes: int = 64 * 1024  # more of a receiver's answer is never read
    # deliveries of one owner in flight before other owners' due events go first (None: a
    # quarter of batch_size), so one owner's slow receivers cannot hold every slot
    owner_share: int | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.backoff_s <= 0 or self.poll_s <= 0:
            raise ValueError("timeout_s, backoff_s and poll_s must be > 0")
        if self.hold_margin_s <= 0:
            raise ValueError("hold_margin_s must be > 0")
        if self.batch_size < 1 or self.max_attempts < 1 or self.max_response_bytes < 0:
            raise ValueError("batch_size and max_attempts must be >= 1, max_response_bytes >= 0")
        if self.owner_share is not None and self.owner_share < 1:
            raise ValueError("owner_share must be >= 1")

    @property
    def share(self) -> int:
        """Deliveries of one owner in flight at which other owners' due events go first."""
        return self.owner_share if self.owner_share is not None else max(1, self.batch_size // 4)

    @property
    def hold_s(self) -> float:
        """How long a claim, and then the count as its request goes out, keep the event from
        other claims: its request has surely ended by then. (A count stuck on the database
        can outlast a claim's hold; the count's guard then lets only one request out.)"""
        return self.timeout_s + self.hold_margin_s


class Attempt(msgspec.Struct, frozen=True):
    """What one request to a receiver gave: its status code and, unless 2xx, why it failed.

    `counted`: the attempt was counted as its request went out; otherwise the request never
    went out (or went through a transport without httpcore's trace hook), and recording the
    outcome counts it.
    """

    status_code: int | None
    error: str | None
    counted: bool = False


class _MovedOn(Exception):
    """The event moved on before its request went out: it must not be sent."""


class _SendCounter:
    """httpcore's `trace` hook for one attempt: counts it as its request starts going out.

    The count commits before the first byte of the request is written, so an attempt whose
    sender dies afterwards still counts, and one that dies before it (or never connects)
    does not. A count the database refuses (the event moved on) stops the request.

    The attempt's time limit (`limit`) stands still while the count is written, so a slow
    database does not time the attempt out between a committed count and its request; the
    count has a limit of its own (`count_s`). Only a count that outlasts that may commit
    unseen ("unknown"): then nothing is sent or recorded, and the event's hold decides.
    """

    def __init__(self, count: Callable[[], Awaitable[bool]], count_s: float) -> None:
        self._count = count
        self._count_s = count_s
        self.limit: asyncio.Timeout | None = None
        # "unknown": the count was being written when it failed or was interrupted
        self.state: Literal["not sent", "counted", "moved on", "unknown"] = "not sent"

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if self.state != "not sent" or not name.endswith(".send_request_headers.started"):
            return
        with self._limit_paused():
            self.state = "unknown"
            async with asyncio.timeout(self._count_s):
                counted = await self._count()
        if not counted:
            self.state = "moved on"
            raise _MovedOn
        self.state = "counted"

    @contextlib.contextmanager
    def _limit_paused(self) -> Iterator[None]:
        limit = self.limit
        when = None if limit is None or limit.expired() else limit.when()
        if limit is None or when is None:
            yield
            return
        clock = asyncio.get_running_loop().time
        left = when - clock()
        if left <= 0:  # the attempt's time is up: it fails unsent, uncounted
            raise TimeoutError
        limit.reschedule(None)
        try:
            yield
        finally:
            limit.reschedule(clock() + left)


class Dispatcher:
    """Claims due events with SKIP LOCKED, sends them signed, records every attempt.

    Several dispatchers may run at once. A claim holds an event for one attempt; the attempt
    counts, committed, as its request starts going out (or when a failure to connect is
    recorded), and the outcome is recorded guarded by (event, attempt). A dispatcher that
    dies mid-delivery loses nothing: its events are claimed again once their hold runs out,
    or end `failed` when that was their last attempt, sent. Counts and outcomes of
    concurrent deliveries are each written together (group commits).
    """

    def __init__(
        self,
        config: DispatcherConfig,
        repo: repository.OutboxRepository,
        client: httpx.AsyncClient,
        *,
        dsn: str,
        process_id: str = "dispatcher",
    ) -> None:
        self.config = config
        self.process_id = process_id
        self.stats = stats.ProcessStats()
        self._stats_out = stats.Flusher(repo, process_id, self.stats)
        self.repo = repo
        self.counts = group_commit.GroupCommit(self._count_attempts, max_batch=config.batch_size)
        self.outcomes = group_commit.GroupCommit(repo.record_outcomes, max_batch=config.batch_size)
        self.client = client
        self._dsn = dsn
        self._tasks: dict[asyncio.Task[None], models.Owner] = {}
        self._in_flight: collections.Counter[models.Owner] = collections.Counter()
        self._wake = asyncio.Event()
        self._notified = True  # a NOTIFY (or a LISTEN reconnect) came since the last claim
        self._look_at = 0.0  # loop time by which something may have come due: claim again
        self._others_at = 0.0  # loop time from which to look for other owners' events first

    async def run_once(self) -> int:
        """Sweep lost last attempts, then attempt every due event once; returns attempts made.

        Each claimed batch is delivered concurrently and awaited before the next claim.
        """
        await self.sweep()
        made = 0
        while True:
            claimed = (await self._claim(self.config.batch_size)).events
            if claimed:
                await asyncio.gather(*(self.deliver(c.event, c.secrets) for c in claimed))
            made += len(claimed)
            if len(claimed) < self.config.batch_size:
                return made

    async def sweep(self, now: dt.datetime | None = None) -> int:
        """End `failed` the events whose last attempt was never recorded; returns how many."""
        swept = await self.repo.sweep_exhausted(max_attempts=self.config.max_attempts, now=now)
        for event in swept:
            _log_lost(
                event.event_id,
                event.job_id,
                event.owner,
                event.url,
                event.attempts,
                event.last_error,
            )
            self.stats.count_delivery("failed")
        return len(swept)

    async def _claim(self, limit: int, excluding: Sequence[str] = ()) -> repository.Claim:
        claim = await self.repo.claim_signed(
            limit,
            max_attempts=self.config.max_attempts,
            hold_s=self.config.hold_s,
            excluding=excluding,
        )
        for c in claim.events:
            if c.lost_attempt is not None:
                e = c.event
                _log_lost(
                    e.event_id, e.job_id, e.owner, e.url, c.lost_attempt, c.lost_error, "pending"
                )
                self.stats.count_delivery("retry")
        return claim

    async def _count_attempts(self, events: Sequence[models.OutboxEvent]) -> list[bool]:
        return await self.repo.count_attempts(
            events,
            max_attempts=self.config.max_attempts,
            backoff_s=self.config.backoff_s,
            hold_s=self.config.hold_s,
        )

    async def deliver(self, event: models.OutboxEvent, secrets: list[str]) -> None:
        """Send one claimed event once and record the outcome (errors are recorded, not raised).

        An attempt whose request did not go out because its count could not be written (the
        event moved on, or the database was away) records nothing: the event stays held.
        """
        started = time.perf_counter()
        attempt = await self.attempt(event, secrets)
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if attempt is None:
            log.warning("callback_not_sent", event_id=str(event.event_id), attempt=event.attempts)
            return
        outcome = repository.Outcome(
            event=event,
            counted=attempt.counted,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=duration_ms,
            max_attempts=self.config.max_attempts,
            backoff_s=self.config.backoff_s,
        )
        status: Status
        try:
            recorded = await self.outcomes.submit(outcome)
        except errors.DatabaseUnavailable as exc:
            recorded = errors.Refused(str(exc))
        except Exception as exc:
            log.exception("callback_outcome_recording_failed", event_id=str(event.event_id))
            recorded = errors.Refused(str(exc))
        if isinstance(recorded, errors.Refused):
            # The event stays held, then is claimed again: at least once, never lost.
            log.warning(
                "callback_outcome_not_recorded", event_id=str(event.event_id), error=str(recorded)
            )
            status = None
            if not attempt.counted:
                await self._count_unrecorded(event)
        else:
            status = recorded
        if status == "pending":  # our own retry: look for it when it comes due
            retry_in = self.config.backoff_s * 4.0 ** (event.attempts - 1)
            self._look_by(asyncio.get_running_loop().time() + retry_in)
        if status is not None:  # an unrecorded attempt is counted when it is found lost
            self.stats.count_delivery(DELIVERY_OUTCOMES[status])
        log_at = log.info if attempt.error is None else log.warning
        log_at(
            "audit.callback_delivery",
            event_id=str(event.event_id),
            job_id=str(event.job_id),
            owner=event.owner,
            url=event.url,
            attempt=event.attempts,
            outcome="delivered" if attempt.error is None else "failed",
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=duration_ms,
            status=status,  # None: not recorded (the event moved on, or the database was away)
        )

    async def _count_unrecorded(self, event: models.OutboxEvent) -> None:
        """Count an attempt that only recording would have counted (its request never went
        out) when the recording was refused: an outcome the database refuses every time must
        not have its event attempted forever. If the database is away, nothing is counted."""
        try:
            await self.counts.submit(event)
        except Exception as exc:
            log.warning(
                "callback_attempt_not_counted", event_id=str(event.event_id), error=str(exc)
            )

    async def attempt(self, event: models.OutboxEvent, secrets: list[str]) -> Attempt | None:
        """POST the stored body once, signed now; success only on 2xx, no redirects followed.

        None: the request did not go out because its count was refused or not written.
        """
        if not secrets:
            return Attempt(None, f"owner {event.owner} has no webhook secret to sign with")
        body = event.payload.encode()
        try:
            headers = signing.headers(
                msg_id=str(event.event_id),
                timestamp=int(time.time()),
                body=body,
                secrets=secrets,
                app_version=self.config.app_version,
            )
        except ValueError as exc:
            return Attempt(None, f"owner {event.owner}'s webhook secret cannot sign: {exc}")
        headers["accept-encoding"] = "identity"  # the capped read below is of plain bytes
        counter = _SendCounter(lambda: self.counts.submit(event), self.config.timeout_s)
        code: int | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s) as counter.limit:
                async with self.client.stream(
                    "POST",
                    event.url,
                    content=body,
                    headers=headers,
                    timeout=self.config.timeout_s,
                    follow_redirects=False,
                    extensions={"trace": counter},
                ) as response:
                    code = response.status_code
                    answer = await _read_capped(response, self.config.max_response_bytes)
        except Exception as exc:
            if counter.state in ("moved on", "unknown"):
                return None
            counted = counter.state == "counted"
            if code is not None and 200 <= code < 300:
                # accepted: only reading the rest of the answer failed
                return Attempt(code, None, counted)
            failed = self._unanswered(event, exc, counted)
            if code is not None:  # refused, then the rest of the answer failed
                return Attempt(code, f"HTTP {code}, then {failed.error}", counted)
            return failed
        counted = counter.state == "counted"
        if 200 <= code < 300:
            return Attempt(code, None, counted)
        if 300 <= code < 400:
            # Cut as an answer's body is: a receiver's header may run to 100 KB.
            where = response.headers.get("location", "")[:ERROR_SNIPPET_CHARS]
            error = f"HTTP {code}: redirects are not followed (location: {where})"
            return Attempt(code, error, counted)
        snippet = errors.one_line(answer.decode("utf-8", errors="replace"))
        return Attempt(code, f"HTTP {code}: {snippet[:ERROR_SNIPPET_CHARS]}".rstrip(": "), counted)

    def _unanswered(self, event: models.OutboxEvent, exc: Exception, counted: bool) -> Attempt:
        """The failed attempt for a request that got no usable answer (called while handling)."""
        if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
            return Attempt(None, f"no answer within {self.config.timeout_s:g} s", counted)
        if isinstance(exc, errors.InvalidInput):
            return Attempt(None, f"callback URL refused: {exc.message}", counted)
        if not isinstance(exc, httpx.HTTPError):
            log.exception("callback_attempt_error", event_id=str(event.event_id))
        error = f"request failed: {errors.describe(exc)}"
        return Attempt(None, error, counted)

    async def run(self, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
        """Deliver until `stop` is set, sleeping until the earliest due event, a NOTIFY or poll_s.

        A finished delivery frees a slot but claims again only when the last claim filled every
        free slot (more may be due): otherwise nothing can have come due before the earliest
        due time seen at the last look, one of our own retries, or a NOTIFY. On stop, what is
        due then is claimed once more into the free slots, and deliveries in flight finish
        (each is bounded by timeout_s, twice that with the time its count may wait on the
        database) unless `hurry` is set: then they are cut off, and their events are attempted
        again once their hold runs out. Errors are logged and the loop goes on.
        """
        log.info("dispatcher_started", batch_size=self.config.batch_size)
        listener = asyncio.create_task(self._listen(stop), name="listen")
        clock = asyncio.get_running_loop().time
        next_sweep = next_flush = clock()
        more = False  # the last claim filled every free slot: more may be due
        outage = notify.Backoff(
            self.config.poll_s,
            failed="dispatcher_database_unavailable",
            recovered="dispatcher_database_available",
        )
        faults = notify.Backoff(
            self.config.poll_s,
            failed="dispatcher_failed",
            recovered="dispatcher_recovered",
            unexpected=True,
        )
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    # Only events whose last attempt's hold ran out are swept: once per poll_s
                    # is soon enough, and spares a statement on every pass.
                    if clock() >= next_sweep:
                        next_sweep = clock() + self.config.poll_s
                        await self.sweep()
                        outage.succeeded()
                    free = self.config.batch_size - len(self._tasks)
                    if free > 0 and (more or self._notified or clock() >= self._look_at):
                        self._notified = False
                        self._look_at = math.inf  # retries recorded meanwhile may lower it
                        claimed, due_in = await self._start(free)
                        outage.succeeded()
                        more = claimed == free
                        if more:
                            continue  # there may be more due
                        if claimed == 0:  # a claim that took something said it already
                            due_in = await self.repo.next_due_in()
                        look_in = self.config.poll_s
                        if due_in is not None:
                            look_in = min(look_in, max(due_in, MIN_WAIT_S))
                            if due_in <= 0:  # due but not claimed: maybe a lost last attempt
                                next_sweep = clock()
                        self._look_at = min(self._look_at, clock() + look_in)
                except errors.DatabaseUnavailable as exc:
                    wait = outage.failed(exc)
                    # Not again before the backoff: a delivery ending meanwhile wakes the loop,
                    # and neither a full claim nor a claim due when the sweep failed is a
                    # reason to claim at once.
                    more = False
                    self._look_at = clock() + wait
                    next_sweep = max(next_sweep, clock() + wait)
                    await notify.first(self._wake.wait(), stop.wait(), timeout=wait)
                    continue
                except Exception as exc:
                    # An error that stays (a previous version's statements on a migrated
                    # schema) is not tried again before the backoff's wait, not even at a
                    # NOTIFY: every job's end would otherwise log it once more.
                    wait = faults.failed(exc)
                    more = False
                    self._look_at = clock() + wait
                    next_sweep = max(next_sweep, clock() + wait)
                    await notify.first(stop.wait(), timeout=wait)
                    continue
                else:
                    faults.succeeded()  # the pass after a failure runs both the sweep and a claim
                if clock() >= next_flush:
                    next_flush = clock() + FLUSH_S
                    await self._stats_out.flush()
                wait = min(self.config.poll_s, max(next_flush - clock(), 0.0))
                if len(self._tasks) < self.config.batch_size:
                    wait = min(wait, max(self._look_at - clock(), 0.0))
                await notify.first(self._wake.wait(), stop.wait(), timeout=wait)
            if not (hurry and hurry.is_set()):
                await self._last_claim()
            if self._tasks:
                log.info("dispatcher_stopping", in_flight=len(self._tasks))
                await notify.first(
                    asyncio.wait(list(self._tasks)), (hurry or asyncio.Event()).wait(), timeout=None
                )
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            for task in list(self._tasks):
                task.cancel()  # hurried or cancelled: held events are attempted again
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.counts.cancel()
            await self.outcomes.cancel()
            await self._stats_out.retire()
        log.info("dispatcher_stopped")

    async def _last_claim(self) -> None:
        """On a graceful stop, start what is due now in the free slots: the events written as
        the stop was asked (the last jobs of a worker stopped just before) go out with the
        deliveries in flight rather than waiting for the next dispatcher."""
        free = self.config.batch_size - len(self._tasks)
        if free <= 0:
            return
        try:
            await self._start(free)
        except errors.DatabaseUnavailable as exc:
            log.warning("dispatcher_database_unavailable", error=str(exc))
        except Exception:
            log.exception("dispatcher_failed")

    async def _start(self, free: int) -> tuple[int, float | None]:
        """Claim up to `free` events and start their deliveries; how many, and the next due.

        Owners with their share in flight are passed over while other owners' events are due;
        when no owner has its share yet, the oldest due events come first, at most a share of
        them; what is left goes to anyone, so one owner's backlog still gets every slot nobody
        else needs.
        """
        share = self.config.share
        clock = asyncio.get_running_loop().time
        claims: list[repository.Claim] = []

        async def take(limit: int, excluding: Sequence[str] = ()) -> bool:
            """Claim and start up to `limit` events; whether it took all (more may be due)."""
            claims.append(await self._claim(limit, excluding))
            self._launch(claims[-1])
            return len(claims[-1].events) == limit

        left, more = free, True
        if not self._busy(share):
            more = await take(min(left, share))
            left -= len(claims[-1].events)
        busy = self._busy(share)
        if left > 0 and more and busy and clock() >= self._others_at:
            if not await take(left, busy):
                # No other owner's event is due now. That claim walked past every due event
                # of the busy owners: with one owner's backlog it is not repeated on each
                # claim, only once per poll_s (how late another owner's event may go first).
                self._others_at = clock() + self.config.poll_s
            left -= len(claims[-1].events)
        if left > 0 and more:
            await take(left)
        due = [claim.next_due_in for claim in claims if claim.next_due_in is not None]
        return sum(len(claim.events) for claim in claims), min(due, default=None)

    def _busy(self, share: int) -> list[models.Owner]:
        """The owners with at least `share` deliveries in flight."""
        return [owner for owner, n in self._in_flight.items() if n >= share]

    def _launch(self, claim: repository.Claim) -> None:
        """Start the deliveries of a claim's events, counted per owner while in flight."""
        for c in claim.events:
            task = asyncio.create_task(
                self.deliver(c.event, c.secrets), name=f"callback-{c.event.event_id}"
            )
            self._tasks[task] = c.event.owner
            self._in_flight[c.event.owner] += 1
            task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        owner = self._tasks.pop(task, None)
        if owner is not None:
            self._in_flight[owner] -= 1
            if self._in_flight[owner] <= 0:
                del self._in_flight[owner]
        self._wake.set()

    def _look_by(self, at: float) -> None:
        """Claim again by loop time `at` at the latest."""
        if at < self._look_at:
            self._look_at = at
            self._wake.set()  # the loop may be sleeping past `at`

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for new outbox events; reconnect after any connection loss."""
        await notify.listen(
            self._dsn,
            {CHANNEL_OUTBOX: self._on_outbox},
            on_connect=self._on_outbox,  # NOTIFYs may have been missed while disconnected
            stop=stop,
            retry_s=self.config.poll_s,
        )

    def _on_outbox(self, *_args: object) -> None:
        self._notified = True
        self._wake.set()


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the answer's body, as sent (the rest is never read)."""
    received = bytearray()
    if limit <= 0:
        return b""
    try:
        async for chunk in response.aiter_raw():  # raw: no decompression to blow up
            received += chunk[: limit - len(received)]
            if len(received) >= limit:
                break
    except httpx.StreamConsumed:  # an answer already in memory (httpx.MockTransport)
        return response.content[:limit]
    return bytes(received)


def config_from(settings: Settings) -> DispatcherConfig:
    """The dispatcher's config from menos settings (MENOS_CALLBACK_*, MENOS_WORKER_POLL_S)."""
    return DispatcherConfig(
        timeout_s=settings.callback_timeout_s,
        backoff_s=settings.callback_backoff_s,
        poll_s=settings.worker_poll_s,
        app_version=versions.app_version(),
    )


def http_client(
    config: DispatcherConfig,
    *,
    allow_private: bool,
    network: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """The client every delivery of one dispatcher goes through (`network`: a test's)."""
    return httpx.AsyncClient(
        transport=ssrf.PinnedTransport(allow_private=allow_private, network=network),
        follow_redirects=False,
        timeout=config.timeout_s,
        trust_env=False,  # no proxy or .netrc credentials on callbacks
        cookies=ssrf.no_cookies(),
        headers={"user-agent": f"menos/{config.app_version}"},
    )


async def serve(settings: Settings, dsn: str, stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """Run one dispatcher on `dsn` until `stop` is set (`hurry`: cut deliveries in flight
    short): the body of `bin/dispatcher`.

    Raises DatabaseUnavailable when the database cannot be reached at start.
    """
    config = config_from(settings)
    queries = db.Queries()
    process_id = f"dispatcher:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    pool = await db.create_pool(dsn, min_size=1, max_size=max(4, config.batch_size // 4))
    client = http_client(config, allow_private=settings.callback_allow_private)
    try:
        repo = repository.OutboxRepository(pool, queries)
        await stopping.run_until_stopped(
            Dispatcher(config, repo, client, dsn=dsn, process_id=process_id).run(stop, hurry),
            stop,
            hurry=hurry,
            grace_s=config.timeout_s,  # deliveries in flight end within their timeout
            name="dispatcher",
        )
    finally:
        await client.aclose()
        await db.close_pool(pool)


def _log_lost(
    event_id: uuid.UUID,
    job_id: models.JobId,
    owner: models.Owner,
    url: str,
    attempt: int,
    error: str | None,
    status: str = "failed",
) -> None:
    """The log line of an attempt whose outcome was never recorded (its audit row is written
    by the statement that found it)."""
    log.warning(
        "audit.callback_delivery",
        event_id=str(event_id),
        job_id=str(job_id),
        owner=owner,
        url=url,
        attempt=attempt,
        outcome="lost",
        error=error,
        status=status,
    )

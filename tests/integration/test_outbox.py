"""The SQL rules of callback delivery, one per test, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
import standardwebhooks
import structlog.testing

from menos import db, errors
from menos.pipeline import ssrf
from menos.queue import dispatcher, group_commit, models, repository, stats
from tests.integration import helpers
from tests.support import outage, tcp_proxy
from tests.support.http_network import HandlerNetwork
from tests.support.silent_dns import SilentDNS

HOLD = 12.0
BACKOFF = 2.0
MAX = 3
HOOK = "http://192.0.2.7/hook"  # an address literal: the fake network answers it, no DNS


@pytest.fixture
def outbox(pool: asyncpg.Pool[Any]) -> repository.OutboxRepository:
    """The outbox repository over the test's database."""
    return repository.OutboxRepository(pool, db.Queries())


async def make_events(
    repo: repository.Repository, n: int, *, url: str = HOOK, owner: str = "alice"
) -> list[models.JobId]:
    """`n` jobs of `owner` that completed with a callback, so `n` outbox events; returns the
    job ids."""
    await helpers.owner(repo, owner)
    for _ in range(n):
        await repo.enqueue(helpers.note(owner, callback_url=url))
    claimed = await repo.claim(
        "w", n, max_processing=1000, lease_s=30, pipeline_version=helpers.VERSION
    )
    for item in claimed:
        guard = repository.Guard(item.job.job_id, "w", item.job.attempts)
        assert (
            await repo.complete(
                guard,
                result={"summary": "s"},
                tags=[],
                stages=[],
                diagnostics={},
                full_payload=None,
            )
            == "completed"
        )
    return [item.job.job_id for item in claimed]


def dispatcher_config(
    *, timeout_s: float = 5.0, poll_s: float = 1.0
) -> dispatcher.DispatcherConfig:
    """The tests' dispatcher: BACKOFF between attempts, user-agent menos/9.9.9."""
    return dispatcher.DispatcherConfig(
        timeout_s=timeout_s, backoff_s=BACKOFF, poll_s=poll_s, app_version="9.9.9"
    )


async def db_now(pool: asyncpg.Pool[Any]) -> dt.datetime:
    now: dt.datetime = await pool.fetchval("SELECT now()")
    return now


async def claim(
    outbox: repository.OutboxRepository, now: dt.datetime, limit: int = 10
) -> list[models.OutboxEvent]:
    claim = await outbox.claim_signed(limit, max_attempts=MAX, hold_s=HOLD, now=now)
    return [claimed.event for claimed in claim.events]


async def count(
    outbox: repository.OutboxRepository,
    events: list[models.OutboxEvent],
    now: dt.datetime | None = None,
    hold_s: float = HOLD,
) -> list[bool]:
    """Count the attempts as the dispatcher does when their requests go out."""
    return await outbox.count_attempts(
        events, max_attempts=MAX, backoff_s=BACKOFF, hold_s=hold_s, now=now
    )


async def row(pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    found = await pool.fetchrow(
        "SELECT status, attempts, next_attempt_at, last_status_code, last_error, delivered_at "
        "FROM menos.callback_outbox"
    )
    assert found is not None
    return dict(found)


async def audit_details(pool: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT detail FROM menos.audit_event WHERE event = 'audit.callback_delivery' "
        "ORDER BY audit_id"
    )
    return [r["detail"] for r in rows]


async def record_delivered(
    outbox: repository.OutboxRepository,
    event: models.OutboxEvent,
    *,
    status_code: int,
    duration_ms: float,
    now: dt.datetime | None = None,
    counted: bool = True,
) -> bool:
    """Record one delivered attempt; False when its event moved on."""
    outcome = repository.Outcome(
        event=event,
        counted=counted,
        status_code=status_code,
        error=None,
        duration_ms=duration_ms,
        now=now,
    )
    (status,) = await outbox.record_outcomes([outcome])
    assert not isinstance(status, errors.Refused)
    return status is not None


async def record_failure(
    outbox: repository.OutboxRepository,
    event: models.OutboxEvent,
    *,
    status_code: int | None,
    error: str,
    duration_ms: float,
    max_attempts: int,
    backoff_s: float,
    now: dt.datetime | None = None,
    counted: bool = True,
) -> repository.OutboxStatus | None:
    """Record one failed attempt; its event's status, None when the event moved on."""
    outcome = repository.Outcome(
        event=event,
        counted=counted,
        status_code=status_code,
        error=error,
        duration_ms=duration_ms,
        max_attempts=max_attempts,
        backoff_s=backoff_s,
        now=now,
    )
    (status,) = await outbox.record_outcomes([outcome])
    assert not isinstance(status, errors.Refused)
    return status


async def test_two_dispatchers_never_claim_the_same_event(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Eight concurrent claimers split 40 due events: each event goes to exactly one of them."""
    await make_events(repo, 40)
    now = await db_now(pool)
    seen: list[Any] = []
    for _round in range(3):
        batches = await asyncio.gather(*(claim(outbox, now, limit=3) for _ in range(8)))
        seen.extend(event.event_id for batch in batches for event in batch)
    assert len(seen) == len(set(seen)) == 40
    attempts = await pool.fetch("SELECT DISTINCT attempts FROM menos.callback_outbox")
    assert [r["attempts"] for r in attempts] == [0]  # none counted: no request went out


async def test_a_claim_holds_the_event_and_counts_nothing_until_its_request_goes_out(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """A sender that dies between its claim and its request costs no attempt: once the hold
    runs out the event is attempt 1 again. Counted as its request goes out, it is held past
    the next backoff, so a sender dying then is followed by attempt 2 no sooner than that."""
    await make_events(repo, 1)
    now = await db_now(pool)
    (event,) = await claim(outbox, now)
    assert event.attempts == 1
    assert json.loads(event.payload)["event_id"] == str(event.event_id)
    state = await row(pool)
    assert state["attempts"] == 0 and state["status"] == "pending"
    assert state["next_attempt_at"] == now + dt.timedelta(seconds=HOLD)
    assert await claim(outbox, now + dt.timedelta(seconds=HOLD - 0.5)) == []
    at = now + dt.timedelta(seconds=HOLD)
    (again,) = await claim(outbox, at)
    assert again.event_id == event.event_id and again.attempts == 1
    assert again.payload == event.payload
    assert await count(outbox, [again], at, hold_s=0.5) == [True]
    state = await row(pool)
    assert state["attempts"] == 1
    assert state["next_attempt_at"] == at + dt.timedelta(seconds=BACKOFF)  # longer than 0.5 s
    (second,) = await claim(outbox, at + dt.timedelta(seconds=BACKOFF))
    assert second.attempts == 2


async def test_a_count_for_an_event_that_moved_on_is_refused(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Two senders holding the same attempt (the first one's hold ran out): only one count
    wins, so only one request goes out; nor is an event that ended counted again."""
    await make_events(repo, 2)
    now = await db_now(pool)
    stale, other = await claim(outbox, now)
    (current,) = await claim(outbox, now + dt.timedelta(seconds=HOLD), limit=1)
    stale = next(e for e in (stale, other) if e.event_id == current.event_id)
    other = next(e for e in await claim(outbox, now + dt.timedelta(seconds=HOLD)))
    assert await count(outbox, [current, other]) == [True, True]
    assert await count(outbox, [stale]) == [False]
    assert await record_delivered(outbox, other, status_code=204, duration_ms=1.0)
    assert await count(outbox, [other]) == [False]
    attempts = await pool.fetch("SELECT attempts FROM menos.callback_outbox")
    assert [r["attempts"] for r in attempts] == [1, 1]


async def test_failed_attempts_back_off_then_end_failed_leaving_the_job_alone(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Attempt 2 comes the backoff after failure 1, attempt 3 four times that; then failed."""
    await make_events(repo, 1)
    at = await db_now(pool)
    for attempt, wait in ((1, BACKOFF), (2, 4 * BACKOFF), (3, None)):
        (event,) = await claim(outbox, at)
        assert event.attempts == attempt
        if attempt != 2:
            assert await count(outbox, [event], at) == [True]
        answered = at + dt.timedelta(seconds=0.25)
        status = await record_failure(
            outbox,
            event,
            status_code=503,
            error="HTTP 503: busy",
            duration_ms=250.0,
            max_attempts=MAX,
            backoff_s=BACKOFF,
            now=answered,
            counted=attempt != 2,  # counted as sent (1, 3), or by its record (2)
        )
        state = await row(pool)
        if wait is None:
            assert status == "failed" and state["status"] == "failed"
        else:
            assert status == "pending"
            assert state["next_attempt_at"] == answered + dt.timedelta(seconds=wait)
            assert await claim(outbox, state["next_attempt_at"] - dt.timedelta(seconds=0.1)) == []
            at = state["next_attempt_at"]
    assert (state["attempts"], state["last_status_code"]) == (3, 503)
    assert state["last_error"] == "HTTP 503: busy"
    assert await claim(outbox, at + dt.timedelta(days=1)) == []
    assert await pool.fetchval("SELECT status FROM menos.pipeline_job") == "completed"
    details = await audit_details(pool)
    assert [(d["attempt"], d["outcome"], d["status"]) for d in details] == [
        (1, "failed", "pending"),
        (2, "failed", "pending"),
        (3, "failed", "failed"),
    ]


async def test_an_event_never_counts_below_zero_attempts(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """An event whose count was set below 0 in psql was sent three more times than at most
    three; the database refuses that count, and migration 0019 starts such events at 0."""
    await make_events(repo, 1)
    negative = "UPDATE menos.callback_outbox SET attempts = -3"
    with pytest.raises(asyncpg.CheckViolationError, match="callback_outbox_attempts_check"):
        await pool.execute(negative)
    await pool.execute(
        "ALTER TABLE menos.callback_outbox DROP CONSTRAINT callback_outbox_attempts_check"
    )
    await pool.execute(negative)
    await pool.execute(next(sql for number, _, sql in db.migrations() if number == 19))
    at = await db_now(pool)
    (event,) = await claim(outbox, at)
    assert event.attempts == 1


async def test_last_attempt_never_recorded_ends_failed(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Three attempts whose senders all died after sending leave the event failed once the
    last hold runs out; each lost attempt is audited, the first two by the claim after them."""
    await make_events(repo, 1)
    at = await db_now(pool)
    for attempt in range(1, MAX + 1):
        (claimed,) = (await outbox.claim_signed(1, max_attempts=MAX, hold_s=HOLD, now=at)).events
        event = claimed.event
        assert claimed.lost_attempt == (attempt - 1 or None)
        if attempt > 1:
            assert claimed.lost_error == (await row(pool))["last_error"]
            assert f"outcome of attempt {attempt - 1} was never recorded" in claimed.lost_error
        assert await count(outbox, [event], at) == [True]
        at = (await row(pool))["next_attempt_at"]
    assert event.attempts == MAX
    assert await outbox.sweep_exhausted(max_attempts=MAX, now=at - dt.timedelta(seconds=1)) == []
    assert (await row(pool))["status"] == "pending"
    assert await claim(outbox, at) == []  # no fourth attempt
    (swept,) = await outbox.sweep_exhausted(max_attempts=MAX, now=at)
    assert swept.event_id == event.event_id
    state = await row(pool)
    assert state["status"] == "failed" and state["attempts"] == MAX
    assert "never recorded" in state["last_error"]
    assert await outbox.next_due_in(now=at) is None
    details = await audit_details(pool)
    assert [(d["attempt"], d["outcome"], d["status"]) for d in details] == [
        (1, "lost", "pending"),
        (2, "lost", "pending"),
        (3, "lost", "failed"),
    ]
    assert details[0]["event_id"] == str(event.event_id) and details[0]["url"] == HOOK


async def test_an_outcome_after_its_attempt_was_declared_lost_is_refused(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Once the next claim has audited an attempt `lost`, that attempt's late answer changes
    nothing: the audit never says both "never recorded" and "delivered"."""
    await make_events(repo, 1)
    at = await db_now(pool)
    (slow,) = await claim(outbox, at)
    assert await count(outbox, [slow], at) == [True]
    at = (await row(pool))["next_attempt_at"]
    (claimed,) = (await outbox.claim_signed(1, max_attempts=MAX, hold_s=HOLD, now=at)).events
    assert claimed.lost_attempt == 1
    assert not await record_delivered(outbox, slow, status_code=204, duration_ms=1.0)
    state = await row(pool)
    assert (state["status"], state["attempts"], state["delivered_at"]) == ("pending", 1, None)
    assert state["last_error"].startswith("the outcome of attempt 1 was never recorded")
    details = await audit_details(pool)
    assert [(d["attempt"], d["outcome"], d["status"]) for d in details] == [
        (1, "lost", "pending"),
        (1, "delivered", None),  # refused: the event moved on
    ]


async def test_an_attempt_counted_without_the_marker_is_not_taken_for_lost(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """A dispatcher older than the `unrecorded_attempt` column (still running after the schema
    moved on) counts and records without it: its recorded failure is not audited `lost`, and
    its status code and error stay."""
    await make_events(repo, 1)
    await pool.execute(
        "UPDATE menos.callback_outbox SET attempts = 1, last_status_code = 500,"
        " last_error = 'HTTP 500: boom', next_attempt_at = now() - interval '1 second'"
    )
    (claimed,) = (
        await outbox.claim_signed(1, max_attempts=MAX, hold_s=HOLD, now=await db_now(pool))
    ).events
    assert (claimed.event.attempts, claimed.lost_attempt) == (2, None)
    state = await row(pool)
    assert (state["last_status_code"], state["last_error"]) == (500, "HTTP 500: boom")
    assert await audit_details(pool) == []


async def test_outcome_of_a_superseded_attempt_changes_nothing(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """A sender whose hold ran out, and whose event was attempted again, cannot record its
    answer; nor can one whose request never went out once another sender's did."""
    await make_events(repo, 1)
    now = await db_now(pool)
    (never_sent,) = await claim(outbox, now)
    (stale,) = await claim(outbox, now + dt.timedelta(seconds=HOLD))
    assert await count(outbox, [stale], now + dt.timedelta(seconds=HOLD)) == [True]
    assert not await record_delivered(
        outbox, never_sent, status_code=200, duration_ms=1.0, counted=False
    )
    (current,) = await claim(outbox, now + dt.timedelta(seconds=2 * HOLD))
    assert await count(outbox, [current]) == [True]
    assert not await record_delivered(outbox, stale, status_code=200, duration_ms=1.0)
    late = await record_failure(
        outbox,
        stale,
        status_code=500,
        error="HTTP 500",
        duration_ms=1.0,
        max_attempts=MAX,
        backoff_s=BACKOFF,
    )
    assert late is None
    state = await row(pool)
    assert (state["status"], state["attempts"]) == ("pending", 2)
    assert state["last_error"].startswith("the outcome of attempt 1 was never recorded")
    assert await record_delivered(outbox, current, status_code=204, duration_ms=1.0)
    state = await row(pool)
    assert (state["status"], state["last_status_code"]) == ("delivered", 204)
    assert state["delivered_at"] is not None
    assert not await record_delivered(outbox, current, status_code=200, duration_ms=1.0)
    details = await audit_details(pool)
    assert [(d["attempt"], d["outcome"], d["status"]) for d in details] == [
        (1, "delivered", None),  # never sent: refused
        (1, "lost", "pending"),  # found by the claim of attempt 2
        (1, "delivered", None),  # the stale sender's answers, too late
        (1, "failed", None),
        (2, "delivered", "delivered"),
        (2, "delivered", None),
    ]


async def test_next_due_in_tells_how_long_to_sleep(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """With nothing pending there is no wake-up time; a held event is due when its hold ends."""
    assert await outbox.next_due_in() is None
    await make_events(repo, 1)
    now = await db_now(pool)
    due_in = await outbox.next_due_in(now=now + dt.timedelta(seconds=1))
    assert due_in is not None and due_in <= -0.5
    await claim(outbox, now)
    assert await outbox.next_due_in(now=now) == pytest.approx(HOLD)


async def test_a_claim_tells_when_the_next_event_may_be_due(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """A claim that took events says what next_due_in would say after it, saving that query."""
    await make_events(repo, 2)
    now = await db_now(pool)

    async def claim_one(at: dt.datetime) -> repository.Claim:
        return await outbox.claim_signed(1, max_attempts=MAX, hold_s=HOLD, now=at)

    first = await claim_one(now)
    assert len(first.events) == 1 and first.next_due_in is not None
    assert first.next_due_in <= 0  # the other event is due already
    assert first.next_due_in == pytest.approx(await outbox.next_due_in(now=now))
    second = await claim_one(now)
    assert second.next_due_in == pytest.approx(HOLD)  # the first one's hold
    assert second.next_due_in == pytest.approx(await outbox.next_due_in(now=now))
    nothing = await claim_one(now)
    assert (nothing.events, nothing.next_due_in) == ([], None)


async def test_a_claim_brings_the_secrets_that_sign_now(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Claimed events come with their owner's signing secrets: both during a rotation, then one."""
    await make_events(repo, 2)
    old = await pool.fetchval("SELECT webhook_secret FROM menos.owner WHERE name = 'alice'")
    now = await db_now(pool)
    (before,) = (await outbox.claim_signed(1, max_attempts=MAX, hold_s=HOLD, now=now)).events
    assert before.secrets == [old]
    rotation = await repo.rotate_secret("alice")
    assert rotation is not None and rotation.dropped_until is None  # `old` still signs
    new = rotation.secret
    (during,) = (await outbox.claim_signed(1, max_attempts=MAX, hold_s=HOLD, now=now)).events
    assert during.secrets == [new, old]
    later = now + repository.SECRET_OVERLAP + dt.timedelta(seconds=1)
    claimed = (await outbox.claim_signed(2, max_attempts=MAX, hold_s=HOLD, now=later)).events
    assert [c.secrets for c in claimed] == [[new], [new]]
    assert [c.event.attempts for c in claimed] == [1, 1]  # the first two were never sent


async def test_a_second_rotation_within_the_overlap_says_it_drops_the_first_secret(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """One previous secret is kept: rotating again within 24 h drops the original at once,
    and the rotation says until when it would have signed; after the overlap it says nothing."""
    await helpers.owner(repo)
    first = await repo.rotate_secret("alice")
    assert first is not None and first.dropped_until is None
    second = await repo.rotate_secret("alice")
    assert second is not None
    expires = await pool.fetchval(
        "SELECT previous_secret_expires_at FROM menos.owner WHERE name = 'alice'"
    )
    assert second.dropped_until is not None and second.dropped_until < expires
    later = expires + dt.timedelta(seconds=1)
    third = await repo.rotate_secret("alice", now=later)
    assert third is not None and third.dropped_until is None


async def test_a_rotated_secret_signs_for_24_hours_of_the_database_clock(
    repo: repository.Repository, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher compares the previous secret's end with the database's clock, so a
    rotation sets it from that clock: a CLI host two days fast does not keep the old secret
    signing for three days."""
    await helpers.owner(repo)
    monkeypatch.setattr(repository, "dt", helpers.clock_ahead(dt.timedelta(days=2)))
    assert await repo.rotate_secret("alice") is not None
    overlap = await pool.fetchval(
        "SELECT previous_secret_expires_at - now() FROM menos.owner WHERE name = 'alice'"
    )
    assert abs(overlap - repository.SECRET_OVERLAP) < dt.timedelta(minutes=1)


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


@pytest.fixture
async def deliver(
    outbox: repository.OutboxRepository, database_url: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[int, list[httpx.Request]]]]]:
    """Run one dispatcher pass with a receiver `handler`; returns (attempts made, requests).

    Requests go through httpx's real connection pool to a fake network (so attempts are
    counted as they go out), or with `mock` through `httpx.MockTransport` (so recording the
    outcome counts them), which alone streams answers.
    """
    clients: list[httpx.AsyncClient] = []

    async def run(
        handler: Handler | None = None,
        *,
        mock: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 5.0,
    ) -> tuple[int, list[httpx.Request]]:
        seen: list[httpx.Request] = []

        async def recording(request: httpx.Request) -> httpx.Response:
            await request.aread()
            seen.append(request)
            assert handler is not None
            return await handler(request)

        if transport is None:
            transport = (
                httpx.MockTransport(recording)
                if mock
                else ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(recording))
            )
        client = httpx.AsyncClient(transport=transport)
        clients.append(client)
        config = dispatcher_config(timeout_s=timeout_s)
        made = await dispatcher.Dispatcher(config, outbox, client, dsn=database_url).run_once()
        return made, seen

    yield run
    for client in clients:
        await client.aclose()


async def test_dispatcher_sends_the_stored_body_signed_and_records_delivery(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """The receiver gets the stored body, verifiable with the owner's secret; then delivered."""

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="thanks")

    (job_id,) = await make_events(repo, 1)
    made, (request,) = await deliver(ok)
    assert made == 1
    stored = await pool.fetchrow(
        "SELECT event_id, payload::text AS body FROM menos.callback_outbox"
    )
    assert stored is not None
    assert request.content == stored["body"].encode()
    secret = await pool.fetchval("SELECT webhook_secret FROM menos.owner WHERE name = 'alice'")
    body = standardwebhooks.Webhook(secret).verify(request.content, dict(request.headers))
    assert body["event_id"] == request.headers["webhook-id"] == str(stored["event_id"])
    assert body["type"] == "job.completed" and body["data"]["job_id"] == str(job_id)
    assert request.headers["user-agent"] == "menos/9.9.9"
    assert request.headers["content-type"] == "application/json"
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("delivered", 1, 200)
    (detail,) = await audit_details(pool)
    assert detail["outcome"] == "delivered" and detail["status"] == "delivered"


async def test_redirect_is_a_failed_attempt_and_is_not_followed(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A 302 from the receiver counts as a failure; the redirect target is never requested."""

    async def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest"})

    await make_events(repo, 1)
    made, requests = await deliver(redirect)
    assert made == 1 and len(requests) == 1
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("pending", 1, 302)
    assert "redirects are not followed" in state["last_error"]


async def test_a_long_redirect_location_is_logged_as_it_is_stored(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A receiver's huge `location` is cut as its body would be: the attempt's log line was
    60 KB long (the stored copy was cut to 500 characters)."""

    async def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://x/" + "A" * 60_000})

    await make_events(repo, 1)
    with structlog.testing.capture_logs() as logs:
        await deliver(redirect)
    (line,) = [e for e in logs if e["event"] == "audit.callback_delivery"]
    (detail,) = await audit_details(pool)
    assert len(line["error"]) < 300
    assert line["error"] == detail["error"] == (await row(pool))["last_error"]


async def test_endless_answer_is_read_only_up_to_64_kib(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A receiver streaming an endless error page cannot hold the dispatcher: 64 KiB are read."""
    pulled: list[int] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                pulled.append(16 * 1024)
                yield b"x" * (16 * 1024)

    async def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, stream=Endless())

    await make_events(repo, 1)
    await deliver(endless, mock=True)
    assert sum(pulled) <= 64 * 1024 + 16 * 1024
    state = await row(pool)
    assert state["last_status_code"] == 500 and state["last_error"].startswith("HTTP 500: xxx")
    assert len(state["last_error"]) < 300


async def test_slow_receiver_attempt_fails_with_a_timeout(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A receiver slower than MENOS_CALLBACK_TIMEOUT_S is a failed attempt saying so."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)  # the slow receiver itself: the 0.2 s timeout cuts it off
        return httpx.Response(200)

    await make_events(repo, 1)
    await deliver(slow, timeout_s=0.2)
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("pending", 1, None)
    assert state["last_error"] == "no answer within 0.2 s"


class Stalling(httpx.AsyncByteStream):
    """An answer body that starts with `first` and never finishes."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        await asyncio.Event().wait()  # the rest of the answer never comes
        yield b""


async def test_2xx_whose_body_stalls_counts_as_delivered(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """The status line decides: a receiver that accepted (2xx) but never finishes its answer
    is not sent the event again."""

    async def accepted(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling(b"ok"))

    await make_events(repo, 1)
    await deliver(accepted, mock=True, timeout_s=0.2)
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == (
        "delivered",
        1,
        200,
    )


async def test_a_refusal_whose_body_stalls_keeps_its_status(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A receiver that answered 500 and then never finished its body is recorded with its
    500 and what happened next, not as one that never answered."""

    async def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, stream=Stalling(b"quota exceeded"))

    await make_events(repo, 1)
    await deliver(refused, mock=True, timeout_s=0.2)
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("pending", 1, 500)
    assert state["last_error"] == "HTTP 500, then no answer within 0.2 s"


async def test_private_callback_address_is_refused_at_delivery(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A callback URL that now points at a private address is a failed attempt, never sent."""
    await make_events(repo, 1, url="http://127.0.0.1:9/hook")
    await deliver(transport=ssrf.PinnedTransport(allow_private=False))
    state = await row(pool)
    assert (state["status"], state["attempts"]) == ("pending", 1)
    assert state["last_error"].startswith("callback URL refused: ")
    assert state["last_error"].endswith("host 127.0.0.1 resolves to a non-public address")


async def test_an_attempt_counts_before_its_request_reaches_the_receiver(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """When the receiver gets the request, its attempt is already counted and committed."""
    counted_on_arrival: list[int] = []

    async def ok(request: httpx.Request) -> httpx.Response:
        counted_on_arrival.append(await pool.fetchval("SELECT attempts FROM menos.callback_outbox"))
        return httpx.Response(204)

    await make_events(repo, 1)
    made, requests = await deliver(ok)
    assert made == 1 and len(requests) == 1
    assert counted_on_arrival == [1]
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("delivered", 1, 204)


class _Unreachable(HandlerNetwork):
    """A network whose connections never open: a sender waits in connect."""

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.connected.append((host, port))
        await asyncio.Event().wait()


async def _die_during(
    outbox: repository.OutboxRepository,
    network: HandlerNetwork,
    database_url: str,
    reached: Callable[[], bool],
) -> None:
    """Run a dispatcher over `network` and kill it (cancel) once `reached()` is true."""
    config = dispatcher_config()
    async with httpx.AsyncClient(
        transport=ssrf.PinnedTransport(allow_private=True, network=network)
    ) as client:
        running = asyncio.create_task(
            dispatcher.Dispatcher(config, outbox, client, dsn=database_url).run_once()
        )
        for _ in range(200):  # up to 10 s; reached in well under one
            if reached():
                break
            await asyncio.sleep(0.05)  # the interval of this poll for reached()
        assert reached()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_sender_that_dies_before_its_request_goes_out_costs_no_attempt(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """Killed while connecting, a dispatcher leaves the event uncounted: it is attempt 1 again."""
    await make_events(repo, 1)
    network = _Unreachable(lambda request: httpx.Response(204))
    await _die_during(outbox, network, database_url, lambda: bool(network.connected))
    state = await row(pool)
    assert (state["status"], state["attempts"]) == ("pending", 0)
    (again,) = await claim(outbox, state["next_attempt_at"])
    assert again.attempts == 1
    assert await audit_details(pool) == []


async def test_a_sender_that_dies_after_its_request_went_out_keeps_the_attempt_counted(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """Killed while waiting for the answer, a dispatcher leaves the attempt counted; the next
    one comes no sooner than the backoff."""
    await make_events(repo, 1)
    received: list[httpx.Request] = []

    async def never_answers(request: httpx.Request) -> httpx.Response:
        received.append(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    await _die_during(outbox, HandlerNetwork(never_answers), database_url, lambda: bool(received))
    state = await row(pool)
    assert (state["status"], state["attempts"]) == ("pending", 1)
    assert await audit_details(pool) == []
    (again,) = await claim(outbox, state["next_attempt_at"])
    assert again.attempts == 2
    (lost,) = await audit_details(pool)  # the killed sender's attempt, audited by this claim
    assert (lost["attempt"], lost["outcome"], lost["status"]) == (1, "lost", "pending")


async def test_the_log_lines_of_lost_attempts_name_their_url(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """A lost attempt's `audit.callback_delivery` log line names the receiver's URL, as its
    stored audit row and every other attempt's log line do (found by a claim or by the sweep)."""
    await make_events(repo, 2)
    at = await db_now(pool)
    events = await claim(outbox, at)
    assert await count(outbox, events, at) == [True, True]
    last = events[1]
    for _ in range(MAX - 1):  # the second event's attempts 2 and 3 are counted and lost too
        await pool.execute(
            "UPDATE menos.callback_outbox SET next_attempt_at = now() - interval '1 second' "
            "WHERE event_id = $1",
            last.event_id,
        )
        (last,) = await claim(outbox, await db_now(pool))
        assert await count(outbox, [last]) == [True]
    assert last.attempts == MAX
    await pool.execute(  # as if every hold ran out a second ago
        "UPDATE menos.callback_outbox SET next_attempt_at = now() - interval '1 second'"
    )

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(ok)) as client:
        sender = dispatcher.Dispatcher(dispatcher_config(), outbox, client, dsn=database_url)
        with structlog.testing.capture_logs() as logs:
            await sender.run_once()
    lost = [line for line in logs if line.get("outcome") == "lost"]
    assert sorted((line["status"], line.get("url")) for line in lost) == [
        ("failed", HOOK),  # the sweep's
        ("pending", HOOK),  # the claim's
    ]


class _RowHeldWhileConnecting(HandlerNetwork):
    """Has another transaction lock every outbox row for `hold_s`, then takes `connect_s` to
    connect: the count that follows waits for what is left of the lock."""

    def __init__(
        self, handler: Handler, pool: asyncpg.Pool[Any], *, hold_s: float, connect_s: float
    ) -> None:
        super().__init__(handler)
        self.pool, self.hold_s, self.connect_s = pool, hold_s, connect_s
        self.holder: asyncio.Task[None] | None = None

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        locked = asyncio.Event()

        async def hold() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT 1 FROM menos.callback_outbox FOR UPDATE")
                locked.set()
                await asyncio.sleep(self.hold_s)  # the other transaction's work

        self.holder = asyncio.create_task(hold())
        await locked.wait()
        await asyncio.sleep(self.connect_s)  # a slow connect
        return await super().connect_tcp(host, port, *args, **kwargs)


def _receiving() -> tuple[list[httpx.Request], Handler]:
    received: list[httpx.Request] = []

    async def ok(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    return received, ok


async def test_a_count_that_ends_past_the_attempts_limit_still_sends_its_request(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """The attempt's time limit stands still while its count waits on the database: a 0.3 s
    connect and a 0.3 s wait for the count end past the 0.5 s limit, and the request that was
    counted still goes out and is recorded."""
    received, ok = _receiving()
    await make_events(repo, 1)
    network = _RowHeldWhileConnecting(ok, pool, hold_s=0.6, connect_s=0.3)
    transport = ssrf.PinnedTransport(allow_private=True, network=network)
    await deliver(transport=transport, timeout_s=0.5)
    assert network.holder is not None
    await network.holder
    assert len(received) == 1
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("delivered", 1, 204)
    assert [d["outcome"] for d in await audit_details(pool)] == ["delivered"]


async def test_a_count_stuck_on_the_database_does_not_hold_the_dispatcher(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """A count that waits longer than the attempt's timeout gives up: the delivery ends (so
    a stopping dispatcher is not held by the database) with nothing sent or recorded."""
    received, ok = _receiving()
    await make_events(repo, 1)
    network = _RowHeldWhileConnecting(ok, pool, hold_s=5.0, connect_s=0.0)
    transport = ssrf.PinnedTransport(allow_private=True, network=network)
    await deliver(transport=transport, timeout_s=0.3)
    assert network.holder is not None and not network.holder.done()  # the lock still held
    assert received == []
    await network.holder
    assert await audit_details(pool) == []


async def test_an_event_twice_in_one_group_of_counts_is_counted_once(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Claimed again by its own dispatcher once its hold ran out, an event can be counted
    twice in one group: one of the two may send, the other must not."""
    await make_events(repo, 1)
    now = await db_now(pool)
    (first,) = await claim(outbox, now)
    (again,) = await claim(outbox, now + dt.timedelta(seconds=HOLD))
    assert await count(outbox, [first, again]) == [True, False]
    assert (await row(pool))["attempts"] == 1


async def test_a_count_refused_sends_nothing_and_records_nothing(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the event moved on between the claim and the request (another sender counted it
    first), the request is not sent and no outcome is recorded."""
    real_count = repository.OutboxRepository.count_attempts

    async def another_sender_first(
        self: repository.OutboxRepository, events: Sequence[models.OutboxEvent], **kw: Any
    ) -> list[bool]:
        await pool.execute("UPDATE menos.callback_outbox SET attempts = attempts + 1")
        return await real_count(self, events, **kw)

    monkeypatch.setattr(repository.OutboxRepository, "count_attempts", another_sender_first)

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    await make_events(repo, 1)
    made, requests = await deliver(ok)
    assert made == 1 and requests == []
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_error"]) == ("pending", 1, None)
    assert await audit_details(pool) == []


def outcome(
    event: models.OutboxEvent, status_code: int | None, error: str | None = None
) -> repository.Outcome:
    """An outcome of an attempt whose request never went through a counting transport."""
    return repository.Outcome(
        event=event,
        counted=False,
        status_code=status_code,
        error=error,
        duration_ms=3.5,
        max_attempts=MAX,
        backoff_s=BACKOFF,
    )


async def test_outcomes_recorded_together_are_each_guarded_and_audited(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """One statement records a delivery, a failure and a stale outcome: only the stale one fails."""
    await make_events(repo, 3)
    now = await db_now(pool)
    first, second, third = await claim(outbox, now)
    (current,) = await claim(outbox, now + dt.timedelta(seconds=HOLD), limit=1)
    assert await count(outbox, [current]) == [True]
    stale = next(e for e in (first, second, third) if e.event_id == current.event_id)
    others = [e for e in (first, second, third) if e.event_id != current.event_id]
    statuses = await outbox.record_outcomes(
        [
            outcome(others[0], 204),
            outcome(stale, 200),
            outcome(others[1], 503, "HTTP 503: busy"),
        ]
    )
    assert statuses == ["delivered", None, "pending"]
    rows = {
        r["event_id"]: dict(r)
        for r in await pool.fetch(
            "SELECT event_id, status, attempts, last_status_code, last_error "
            "FROM menos.callback_outbox"
        )
    }
    assert rows[others[0].event_id]["status"] == "delivered"
    assert rows[stale.event_id]["status"] == "pending" and rows[stale.event_id]["attempts"] == 1
    assert rows[stale.event_id]["last_status_code"] is None
    assert rows[others[1].event_id]["last_error"] == "HTTP 503: busy"
    details = await audit_details(pool)
    assert [(d["event_id"], d["attempt"], d["outcome"], d["status"]) for d in details] == [
        (str(others[0].event_id), 1, "delivered", "delivered"),
        (str(stale.event_id), 1, "delivered", None),
        (str(others[1].event_id), 1, "failed", "pending"),
    ]
    assert all(d["duration_ms"] == 3.5 and d["url"] == HOOK for d in details)


async def test_two_outcomes_of_one_attempt_in_one_group_record_only_one(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """The same attempt answered twice in one statement (a claim repeated by its own dispatcher)
    is recorded once: one outcome learns the status, the other learns it moved on, and exactly
    one audit row settles the attempt."""
    await make_events(repo, 1)
    (event,) = await claim(outbox, await db_now(pool))
    statuses = await outbox.record_outcomes([outcome(event, 204), outcome(event, 204)])
    assert sorted(statuses, key=str) == [None, "delivered"]
    assert (await row(pool))["status"] == "delivered"
    settled = [d for d in await audit_details(pool) if d["status"] is not None]
    assert [(d["attempt"], d["status"]) for d in settled] == [(1, "delivered")]


async def test_concurrent_outcomes_share_one_statement_and_each_caller_learns_its_own(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """Outcomes that arrive while a recording is due are written together; each gets its status."""
    await make_events(repo, 6)
    events = await claim(outbox, await db_now(pool))
    writes: list[int] = []

    async def write(group: Sequence[repository.Outcome]) -> list[Any]:
        writes.append(len(group))
        return list(await outbox.record_outcomes(group))

    outcomes = group_commit.GroupCommit(write, max_batch=32)
    statuses = await asyncio.gather(
        *(
            outcomes.submit(outcome(e, 200) if i % 2 else outcome(e, 500, "HTTP 500"))
            for i, e in enumerate(events)
        )
    )
    assert statuses == ["pending", "delivered"] * 3
    assert writes == [6]
    counts = await pool.fetch(
        "SELECT status, count(*) AS n FROM menos.callback_outbox GROUP BY status ORDER BY status"
    )
    assert [(r["status"], r["n"]) for r in counts] == [("delivered", 3), ("pending", 3)]
    assert len(await audit_details(pool)) == 6


async def test_an_outcome_the_database_refuses_does_not_sink_its_group(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """If one outcome of a group cannot be stored, the others are still recorded, one by one."""
    await make_events(repo, 3)
    good, bad, also_good = await claim(outbox, await db_now(pool))
    results = await outbox.record_outcomes(
        [
            outcome(good, 200),
            outcome(bad, 2**40, "HTTP ?"),  # no such status code fits the column
            outcome(also_good, 200),
        ]
    )
    assert results[0] == results[2] == "delivered"
    assert isinstance(results[1], errors.Refused)
    status = await pool.fetchval(
        "SELECT status FROM menos.callback_outbox WHERE event_id = $1", bad.event_id
    )
    assert status == "pending"  # held, so attempted again once the hold runs out
    assert len(await audit_details(pool)) == 2


async def test_outcome_lost_to_a_database_outage_is_attempted_again(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """The database going away after the request went out, before its answer is recorded,
    costs the attempt (counted as it went out), never the event."""
    await make_events(repo, 1)
    own_pool = await db.create_pool(database_url, min_size=1, max_size=2)
    sent: list[int] = []

    async def answer_then_lose_the_database(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        await own_pool.close()  # the dispatcher's database is gone before it records the 200
        return httpx.Response(200)

    config = dispatcher_config()
    network = HandlerNetwork(answer_then_lose_the_database)
    async with httpx.AsyncClient(
        transport=ssrf.PinnedTransport(allow_private=True, network=network)
    ) as client:
        lost = dispatcher.Dispatcher(
            config, repository.OutboxRepository(own_pool, db.Queries()), client, dsn=database_url
        )
        assert await lost.run_once() == 1
    assert sent == [1]
    # not recorded: not counted as delivered either (the next claim counts it as lost)
    assert [s for s in lost.stats.samples() if s[0] == stats.DELIVERIES] == []
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("pending", 1, None)
    assert await audit_details(pool) == []
    assert await claim(outbox, state["next_attempt_at"] - dt.timedelta(seconds=0.1)) == []
    (again,) = await claim(outbox, state["next_attempt_at"])
    assert again.attempts == 2
    assert await record_delivered(outbox, again, status_code=200, duration_ms=1.0, counted=False)
    assert (await row(pool))["status"] == "delivered"


async def test_a_dispatcher_backs_off_during_an_outage_and_delivers_once_it_is_back(
    repo: repository.Repository, pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """While the database is down the dispatcher tries (and logs) less and less often, not
    once per poll; once it is back, due events are delivered without waiting out the backoff."""
    await make_events(repo, 1)
    delivered, answer = _receiving()
    transport = ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(answer))
    with tcp_proxy.running(database_url) as (proxy, through):
        lossy = await db.create_pool(through, min_size=0, max_size=3)
        outbox = repository.OutboxRepository(lossy, db.Queries())
        proxy.cut()
        try:
            with structlog.testing.capture_logs() as logs:
                async with dispatching(dispatcher_config(poll_s=0.05), outbox, through, transport):
                    await outage.backed_off(logs, "dispatcher_database_unavailable")
                    proxy.restore()
                    await until(lambda: bool(delivered), "the delivery")
        finally:
            await lossy.close()
    assert (await row(pool))["status"] == "delivered"
    assert [e["after_failures"] for e in logs if e["event"] == "dispatcher_database_available"] == [
        len([e for e in logs if e["event"] == "dispatcher_database_unavailable"])
    ]


async def test_a_dispatcher_whose_statements_keep_failing_backs_off_and_delivers_once_they_work(
    repo: repository.Repository, pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """A dispatcher whose statements no longer fit the schema (a previous version's, on a
    migrated database) logged the error with its traceback at every poll and every NOTIFY; it
    now tries less and less often, and delivers once its statements work again."""
    await make_events(repo, 1)
    delivered, answer = _receiving()
    transport = ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(answer))
    outbox = repository.OutboxRepository(pool, db.Queries())
    rename = "ALTER TABLE menos.callback_outbox RENAME COLUMN {} TO {}"
    await pool.execute(rename.format("next_attempt_at", "next_attempt_moved"))
    with structlog.testing.capture_logs() as logs:
        async with dispatching(dispatcher_config(poll_s=0.05), outbox, database_url, transport):
            async with outage.notifying(pool, dispatcher.CHANNEL_OUTBOX):
                await outage.backed_off(logs, "dispatcher_failed")
            await pool.execute(rename.format("next_attempt_moved", "next_attempt_at"))
            await until(lambda: bool(delivered), "the delivery")
    assert (await row(pool))["status"] == "delivered"
    failed = [e for e in logs if e["event"] == "dispatcher_failed"]
    assert {e["log_level"] for e in failed} == {"error"}
    assert all(isinstance(e["exc_info"], asyncpg.UndefinedColumnError) for e in failed)
    assert [e["after_failures"] for e in logs if e["event"] == "dispatcher_recovered"] == [
        len(failed)
    ]


async def test_an_unsent_attempt_whose_outcome_is_always_refused_still_counts(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request that never got a connection is counted by recording its failure; if that
    recording is refused, the attempt is counted anyway, so the event ends after three
    attempts instead of being attempted forever."""

    async def refuse(
        self: repository.OutboxRepository, outcomes: Sequence[repository.Outcome]
    ) -> list[Any]:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(repository.OutboxRepository, "record_outcomes", refuse)
    await make_events(repo, 1, url="http://127.0.0.1:9/hook")
    await deliver(transport=ssrf.PinnedTransport(allow_private=False))
    state = await row(pool)
    assert (state["status"], state["attempts"]) == ("pending", 1)


async def test_receiver_answer_with_nul_characters_is_recorded(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    deliver: Callable[..., Awaitable[tuple[int, list[httpx.Request]]]],
) -> None:
    """An error page holding NUL bytes (which PostgreSQL refuses in text) is still recorded,
    each control character quoted as a space."""

    async def nul(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, content=b"bad\x00news")

    await make_events(repo, 1)
    await deliver(nul)
    state = await row(pool)
    assert (state["status"], state["last_status_code"]) == ("pending", 500)
    assert state["last_error"] == "HTTP 500: bad news"


async def test_an_error_text_utf8_cannot_encode_is_recorded(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """A failure whose text holds a lone surrogate is recorded, the surrogate replaced by
    U+FFFD (the database would refuse it for good, and the attempt would never be recorded)."""
    await make_events(repo, 2)
    delivered, failed = await claim(outbox, await db_now(pool))
    statuses = await outbox.record_outcomes(
        [outcome(delivered, 204), outcome(failed, None, "request failed: bad \ud800 name")]
    )
    assert statuses == ["delivered", "pending"]
    error = await pool.fetchval(
        "SELECT last_error FROM menos.callback_outbox WHERE event_id = $1", failed.event_id
    )
    assert error == "request failed: bad \ufffd name"


async def test_running_dispatcher_sweeps_lost_last_attempts_and_delivers_the_rest(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """While it runs, the dispatcher ends a lost third attempt `failed` and delivers what is due."""
    await make_events(repo, 1)
    at = await db_now(pool)
    for _ in range(MAX):
        (lost,) = await claim(outbox, at, limit=1)
        assert await count(outbox, [lost], at) == [True]
        at = (await row_of(pool, lost.event_id))["next_attempt_at"]
    assert lost.attempts == MAX
    await pool.execute(  # as if the third attempt's hold ran out a second ago
        "UPDATE menos.callback_outbox SET next_attempt_at = now() - interval '1 second' "
        "WHERE event_id = $1",
        lost.event_id,
    )
    await make_events(repo, 1)  # and one due now

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    config = dispatcher_config(poll_s=0.2)
    stop = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.MockTransport(ok)) as client:
        sweeper = dispatcher.Dispatcher(config, outbox, client, dsn=database_url)
        running = asyncio.create_task(sweeper.run(stop))
        for _ in range(200):  # up to 10 s; the loop is done in well under one
            statuses = await pool.fetch("SELECT status FROM menos.callback_outbox")
            if sorted(r["status"] for r in statuses) == ["delivered", "failed"]:
                break
            await asyncio.sleep(0.05)  # the interval of this poll for the condition above
        stop.set()
        await running
    assert (await row_of(pool, lost.event_id))["status"] == "failed"
    details = await audit_details(pool)
    assert sorted((d["outcome"], d["status"]) for d in details) == [
        ("delivered", "delivered"),
        ("lost", "failed"),
        ("lost", "pending"),  # attempts 1 and 2, found by the claims after them
        ("lost", "pending"),
    ]
    # the metric agrees with the audit rows of this dispatcher's work: the swept event failed
    delivered = {s[1]: s[2] for s in sweeper.stats.samples() if s[0] == stats.DELIVERIES}
    assert delivered == {"outcome=delivered": 1, "outcome=failed": 1}


async def row_of(pool: asyncpg.Pool[Any], event_id: Any) -> dict[str, Any]:
    found = await pool.fetchrow(
        "SELECT status, attempts, next_attempt_at FROM menos.callback_outbox WHERE event_id = $1",
        event_id,
    )
    assert found is not None
    return dict(found)


async def test_dispatcher_claims_and_records_read_no_table_whole_before_any_analyze(
    database_url: str,
) -> None:
    """With 2,000 events never analyzed (a burst of completions on a fresh install), claiming
    due events and recording their outcomes find rows through indexes: no sequential scan of
    the outbox or the job table."""
    tables = ("callback_outbox", "pipeline_job")
    async with helpers.one_transaction(database_url) as one:
        repo = repository.Repository(one, db.Queries())  # type: ignore[arg-type]
        box = repository.OutboxRepository(one, db.Queries())  # type: ignore[arg-type]
        await helpers.owner(repo)
        await repo.enqueue_many([helpers.note(callback_url=HOOK) for _ in range(2000)])
        held = await repo.claim(
            "w", 2000, max_processing=2000, lease_s=30, pipeline_version=helpers.VERSION
        )
        runs = [
            repository.Completion(
                guard=repository.Guard(h.job.job_id, "w", h.job.attempts),
                result={"summary": "s"},
                tags=[],
                stages=[],
                diagnostics={},
                full_payload=None,
            )
            for h in held
        ]
        assert await repo.complete_many(runs) == ["completed"] * len(runs)
        before = await helpers.sequential_scans(one, tables)
        now = await db_now(one)  # type: ignore[arg-type]
        for _ in range(3):
            events = await claim(box, now, limit=10)
            assert len(events) == 10
            assert await count(box, events, now) == [True] * 10
            outcomes = [
                repository.Outcome(
                    event=e, counted=True, status_code=204, error=None, duration_ms=1.0, now=now
                )
                for e in events
            ]
            assert await box.record_outcomes(outcomes) == ["delivered"] * 10
        assert await helpers.sequential_scans(one, tables) == before


async def test_a_hurried_stop_cuts_deliveries_in_flight_and_keeps_their_events(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """A second stop signal does not wait out a receiver that never answers: the delivery is
    cut off, and its event stays held with the attempt counted, to be attempted again."""
    await make_events(repo, 1)
    reached = asyncio.Event()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        reached.set()
        await asyncio.Event().wait()
        return httpx.Response(200)

    transport = ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(never_answers))
    config = dispatcher_config(timeout_s=3600)  # without the hurry, an hour's wait
    stop, hurry = asyncio.Event(), asyncio.Event()
    async with httpx.AsyncClient(transport=transport) as client:
        sender = dispatcher.Dispatcher(config, outbox, client, dsn=database_url)
        running = asyncio.create_task(sender.run(stop, hurry))
        await asyncio.wait_for(reached.wait(), timeout=30)
        stop.set()
        hurry.set()
        await asyncio.wait_for(running, timeout=60)
    state = await row(pool)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("pending", 1, None)
    assert await audit_details(pool) == []  # no outcome: the next claim audits it lost


async def test_a_stopping_dispatcher_delivers_what_is_due_as_it_stops(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """An event written as the stop came (the last job of a worker stopped just before: `make
    run`'s Ctrl-C stops the dispatcher once the worker has exited) waited for the next
    dispatcher unless a NOTIFY had won the race; a graceful stop claims what is due once more.
    A hurried stop does not."""
    await make_events(repo, 2)
    received: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request.headers["webhook-id"])
        return httpx.Response(204)

    transport = ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(receiver))
    stop = asyncio.Event()
    stop.set()  # before the dispatcher's first look
    async with httpx.AsyncClient(transport=transport) as client:
        for hurry in (stop, None):
            sender = dispatcher.Dispatcher(dispatcher_config(), outbox, client, dsn=database_url)
            await asyncio.wait_for(sender.run(stop, hurry), timeout=60)
            assert len(received) == (0 if hurry else 2)
    statuses = await pool.fetch("SELECT status FROM menos.callback_outbox")
    assert [r["status"] for r in statuses] == ["delivered", "delivered"]


class _Receiver:
    """A receiver on 127.0.0.1 that records which owner's request came in which order;
    `answers` False: it reads each request and never answers (a black hole)."""

    def __init__(self, arrivals: list[str], name: str, *, answers: bool) -> None:
        self.arrivals = arrivals
        self.name = name
        self.answers = answers
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.arrivals.append(self.name)
            if self.answers:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
            else:
                await reader.read()  # until the dispatcher gives up and closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_one_owners_black_hole_receivers_do_not_hold_every_slot(
    repo: repository.Repository, outbox: repository.OutboxRepository, database_url: str
) -> None:
    """An owner whose receiver never answers cannot make another owner's callback wait behind
    all of its events: once it has its share of slots in flight, others' due events go first."""
    arrivals: list[str] = []
    hole = _Receiver(arrivals, "mallory", answers=False)
    good = _Receiver(arrivals, "alice", answers=True)
    await make_events(repo, 16, url=await hole.start(), owner="mallory")
    await make_events(repo, 1, url=await good.start(), owner="alice")  # due after all of mallory's
    config = dispatcher.DispatcherConfig(
        timeout_s=0.5, backoff_s=BACKOFF, poll_s=1.0, app_version="9.9.9", batch_size=4
    )
    try:
        async with dispatching(config, outbox, database_url):
            # without the share, after 16 / 4 * 0.5 s
            await until(lambda: "alice" in arrivals, "alice's request")
    finally:
        await hole.stop()
        await good.stop()
    assert "alice" in arrivals
    # in the first round of 4 slots: mallory's oldest event, alice's, then two more of mallory's
    assert arrivals.index("alice") < config.batch_size


async def test_one_owners_silent_dns_does_not_fail_another_owners_deliveries(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lookups of a name whose DNS never answers (they outlive their attempts) leave no
    other delivery waiting for a lookup thread: another owner's healthy receiver gets its
    event on the first attempt."""
    resolver = SilentDNS()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=2)  # as on a small machine
    asyncio.get_running_loop().set_default_executor(threads)

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    await make_events(repo, 4, url="http://silent.example/hook", owner="mallory")
    await make_events(repo, 1, url="http://fast.example/hook", owner="alice")
    config = dispatcher_config(timeout_s=1.0)
    client = dispatcher.http_client(config, allow_private=True, network=HandlerNetwork(ok))
    try:
        await dispatcher.Dispatcher(config, outbox, client, dsn=database_url).run_once()
    finally:
        resolver.release.set()
        await client.aclose()
        threads.shutdown(wait=False)
    found = await pool.fetch("SELECT owner, status, last_error FROM menos.callback_outbox")
    states = {(r["owner"], r["status"], r["last_error"]) for r in found}
    assert states == {("alice", "delivered", None), ("mallory", "pending", "no answer within 1 s")}


@contextlib.asynccontextmanager
async def dispatching(
    config: dispatcher.DispatcherConfig,
    outbox: repository.OutboxRepository,
    database_url: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[None]:
    """A dispatcher running for the block, over real sockets to 127.0.0.1 (or `transport`)."""
    stop = asyncio.Event()
    transport = transport or ssrf.PinnedTransport(allow_private=True)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        running = asyncio.create_task(
            dispatcher.Dispatcher(config, outbox, client, dsn=database_url).run(stop)
        )
        try:
            yield
        finally:
            stop.set()
            await running


async def until(condition: Callable[[], bool], what: str) -> None:
    """Return once `condition` holds; fail after 20 s saying `what` never came."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)  # the interval of this poll for the condition
    raise AssertionError(f"{what} never came")


class CountingClaims(repository.OutboxRepository):
    """An outbox repository that counts the claims passing over busy owners."""

    passing_over = 0

    async def claim_signed(self, limit: int, **kwargs: Any) -> repository.Claim:
        if kwargs.get("excluding"):
            self.passing_over += 1
        return await super().claim_signed(limit, **kwargs)


async def test_one_owners_backlog_uses_every_slot_without_a_passing_over_claim_each_time(
    repo: repository.Repository, pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """With only one owner's events due, that owner gets every slot, and the claim that looks
    for other owners' events first (a walk past all of its due events) runs once per poll_s,
    not before every claim."""
    await make_events(repo, 40)
    box = CountingClaims(pool, db.Queries())

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    transport = ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(ok))
    config = dispatcher.DispatcherConfig(
        timeout_s=5, backoff_s=BACKOFF, poll_s=3600, app_version="9.9.9", batch_size=4
    )
    async with dispatching(config, box, database_url, transport):
        for _ in range(600):  # up to 30 s; the 40 deliveries take well under one
            delivered = await pool.fetchval(
                "SELECT count(*) FROM menos.callback_outbox WHERE status = 'delivered'"
            )
            if delivered == 40:
                break
            await asyncio.sleep(0.05)  # the interval of this poll for the condition above
    assert (
        await pool.fetchval("SELECT count(*) FROM menos.callback_outbox WHERE status = 'delivered'")
        == 40
    )
    assert box.passing_over == 1


async def test_an_owner_with_its_share_in_flight_yields_slots_freed_one_share_at_a_time(
    repo: repository.Repository, outbox: repository.OutboxRepository, database_url: str
) -> None:
    """Once an owner has its share of deliveries in flight, the next freed slots go to another
    owner's due event, also when slots free up a few at a time (staggered timeouts), not only
    when a whole round ends at once."""
    arrivals: list[str] = []
    hole = _Receiver(arrivals, "mallory", answers=False)
    good = _Receiver(arrivals, "alice", answers=True)
    hole_url = await hole.start()
    config = dispatcher.DispatcherConfig(
        timeout_s=2.0,
        backoff_s=BACKOFF,
        poll_s=1.0,
        app_version="9.9.9",
        batch_size=4,
        owner_share=2,
    )
    try:
        async with dispatching(config, outbox, database_url):
            await make_events(repo, 2, url=hole_url, owner="mallory")
            await until(lambda: len(arrivals) >= 2, "the first two requests")
            await asyncio.sleep(0.3)  # the second pair of slots times out 0.3 s after the first
            await make_events(repo, 2, url=hole_url, owner="mallory")
            await until(lambda: len(arrivals) >= 4, "the next two requests")
            # every slot is mallory's now; then a backlog of hers, and one event of alice's
            await make_events(repo, 12, url=hole_url, owner="mallory")
            await make_events(repo, 1, url=await good.start(), owner="alice")
            # without the share, after all of mallory's 12
            await until(lambda: "alice" in arrivals, "alice's request")
    finally:
        await hole.stop()
        await good.stop()
    assert "alice" in arrivals
    # the first two slots freed (mallory still has her share, 2, in flight) go to alice
    assert arrivals.index("alice") <= config.batch_size + 1, arrivals


async def test_a_running_dispatcher_stores_its_delivery_counts_within_seconds(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
    database_url: str,
) -> None:
    """Deliveries reach `menos.metric_sample` about once a second, as docs/operations.md says,
    also when MENOS_WORKER_POLL_S is long: a dispatcher killed meanwhile loses only that."""
    await make_events(repo, 1)

    async def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    config = dispatcher_config(poll_s=30.0)
    stop = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.MockTransport(ok)) as client:
        sender = dispatcher.Dispatcher(config, outbox, client, dsn=database_url)
        running = asyncio.create_task(sender.run(stop))
        stored = None
        for _ in range(60):  # up to 3 s
            stored = await pool.fetchval(
                "SELECT sum(value) FROM menos.metric_sample WHERE name = $1 AND labels = $2",
                stats.DELIVERIES,
                "outcome=delivered",
            )
            if stored:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
    assert stored == 1


def answering_one_by_one() -> tuple[list[int], asyncio.Event, ssrf.PinnedTransport]:
    """A receiver that holds each request until `answer_now` is set, then answers them 204
    one by one, 0.15 s apart: the requests it got, the event, a transport to it."""
    arrived: list[int] = []
    answer_now = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        arrived.append(1)
        order = len(arrived)
        await answer_now.wait()
        await asyncio.sleep(0.15 * order)
        return httpx.Response(204)

    return (
        arrived,
        answer_now,
        ssrf.PinnedTransport(allow_private=True, network=HandlerNetwork(answer)),
    )


async def test_deliveries_ending_during_an_outage_do_not_hurry_the_backoff(
    repo: repository.Repository, pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """A dispatcher whose last claim filled every slot, then lost its database, tries again
    after poll_s (then twice as long each time), not once per delivery that ends meanwhile:
    each of those would count a failure and take the backoff to its cap at once."""
    await make_events(repo, 8)
    arrived, answer_now, transport = answering_one_by_one()
    config = dispatcher.DispatcherConfig(
        timeout_s=5.0, backoff_s=BACKOFF, poll_s=2.0, app_version="9.9.9", batch_size=4
    )
    with tcp_proxy.running(database_url) as (proxy, through):
        lossy = await db.create_pool(through, min_size=0, max_size=3)
        outbox = repository.OutboxRepository(lossy, db.Queries())
        try:
            with structlog.testing.capture_logs() as logs:
                async with dispatching(config, outbox, through, transport):
                    await until(lambda: len(arrived) == 4, "four requests in flight")
                    proxy.cut()
                    answer_now.set()
                    await asyncio.sleep(0.8)  # every answer has ended; poll_s has not passed
                    proxy.restore()
        finally:
            await lossy.close()
    failures = [e for e in logs if e["event"] == "dispatcher_database_unavailable"]
    assert [e["retry_in_s"] for e in failures] in ([], [2.0]), failures


async def test_deliveries_ending_after_a_failed_sweep_do_not_hurry_the_backoff(
    repo: repository.Repository, pool: asyncpg.Pool[Any], database_url: str
) -> None:
    """A pass sweeps before it claims: when the sweep finds the database gone, a claim due
    then (or a moment later) is not made by the first delivery that ends meanwhile."""
    await make_events(repo, 4)
    arrived, answer_now, transport = answering_one_by_one()
    config = dispatcher.DispatcherConfig(
        timeout_s=5.0, backoff_s=BACKOFF, poll_s=1.0, app_version="9.9.9", batch_size=8
    )
    with tcp_proxy.running(database_url) as (proxy, through):
        lossy = await db.create_pool(through, min_size=0, max_size=3)
        outbox = repository.OutboxRepository(lossy, db.Queries())
        sweep = outbox.sweep_exhausted
        cut_at_sweep = asyncio.Event()

        async def sweep_exhausted(**kwargs: Any) -> list[repository.Swept]:
            if cut_at_sweep.is_set():
                proxy.cut()  # the database is gone when the next sweep looks
            return await sweep(**kwargs)

        outbox.sweep_exhausted = sweep_exhausted  # type: ignore[method-assign]
        try:
            with structlog.testing.capture_logs() as logs:
                async with dispatching(config, outbox, through, transport):
                    await until(lambda: len(arrived) == 4, "four requests in flight")
                    cut_at_sweep.set()
                    await until(lambda: not proxy.up, "the sweep meeting the outage")
                    answer_now.set()
                    await asyncio.sleep(0.8)  # every answer has ended; the first wait has not
                    proxy.restore()
        finally:
            await lossy.close()
    failures = [e for e in logs if e["event"] == "dispatcher_database_unavailable"]
    assert [e["retry_in_s"] for e in failures] == [1.0], failures


async def test_a_group_the_server_gave_up_on_is_recorded_outcome_by_outcome(
    repo: repository.Repository,
    outbox: repository.OutboxRepository,
    pool: asyncpg.Pool[Any],
) -> None:
    """A group of outcomes whose statement the server gave up on while one waited for a held
    event row is recorded outcome by outcome: the others are not delivered again."""
    await make_events(repo, 2)
    first, second = await claim(outbox, await db_now(pool))
    async with pool.acquire() as operator:
        held = operator.transaction()
        await held.start()
        await operator.execute(
            "SELECT 1 FROM menos.callback_outbox WHERE event_id = $1 FOR UPDATE", first.event_id
        )
        task = asyncio.ensure_future(
            outbox.record_outcomes([outcome(first, 204), outcome(second, 204)])
        )
        await helpers.cancel_the_lock_waiter(pool)
        await asyncio.sleep(0.3)
        await held.rollback()
    statuses = await asyncio.wait_for(task, 10)
    assert statuses[1] == "delivered"

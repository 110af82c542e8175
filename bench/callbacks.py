"""Callback deliveries per second from one dispatcher to a receiver on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from menos import db, versions
from menos import logging as menos_logging
from menos.pipeline import ssrf
from menos.queue import dispatcher, models, repository
from tests.support import postgres

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "callbacks.json"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def receiver_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The receiver: reads the whole request, answers 204."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def serve_receiver(port: int) -> None:
    """Run the receiver with uvicorn in this (child) process."""
    import uvicorn

    uvicorn.run(receiver_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"the receiver did not listen on port {port}")


async def make_events(repo: repository.Repository, n: int, url: str) -> None:
    """`n` outbox events, written by the status trigger as pending jobs are cancelled."""
    await repo.create_key("bench", "user")

    async def one(index: int) -> None:
        enqueued = await repo.enqueue(
            models.NewContent(
                owner=models.Owner("bench"),
                content_type="markdown",
                resource_key=None,
                source_url=None,
                title=None,
                tags=[],
                body=f"# Note {index}\n\nSome text.",
                source_metadata={},
                callback_url=url,
                data_tier="compact",
                pipeline_version=versions.app_version(),
            )
        )
        assert enqueued.job_id is not None
        await repo.request_cancel(enqueued.job_id, owner=None)

    for start in range(0, n, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 50, n))))


async def committed(admin_dsn: str, database: str) -> int:
    """Transactions committed in `database` so far, once its sessions have ended.

    Read from the admin database so the reading does not count itself. A session's counts reach
    pg_stat_database when it ends, so this waits for the last one to go, then a little more.
    """
    conn = await db.connect(admin_dsn)
    try:
        for _ in range(600):  # 30 s at most
            if not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            ):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the exiting session reports after it leaves pg_stat_activity
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        count: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
        )
    finally:
        await conn.close()
    return count


async def measure(
    admin_dsn: str,
    dsn: str,
    database: str,
    events: int,
    batch_size: int,
    url: str,
    rate: float = 0.0,
) -> dict[str, Any]:
    """Create the events, then time one dispatcher delivering all of them.

    With `rate` > 0 the events come one by one, `rate` a second, each with a NOTIFY as the
    status trigger sends (a trickle, as behind the pipeline), instead of all at once (a backlog).
    """
    queries = db.Queries()
    setup = await db.create_pool(dsn, min_size=1, max_size=8)
    try:
        await make_events(repository.Repository(setup, queries), events, url)
        if rate > 0:  # kept back, then released by `feed`
            await setup.execute("UPDATE menos.callback_outbox SET next_attempt_at = 'infinity'")
    finally:
        await setup.close()
    before = await committed(admin_dsn, database)
    pool = await db.create_pool(dsn, min_size=2, max_size=max(4, batch_size // 4 + 2))
    watch = await db.connect(dsn)  # the benchmark's own looks, counted apart
    feeder = await db.connect(dsn)
    looks = 0

    async def feed() -> None:
        """Release one kept-back event every 1/rate s, with a NOTIFY, in one statement."""
        nonlocal looks
        start = time.perf_counter()
        for i in range(events):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            looks += 1
            await feeder.execute(
                "WITH next AS (SELECT event_id FROM menos.callback_outbox "
                "WHERE next_attempt_at = 'infinity' ORDER BY event_id LIMIT 1), "
                "released AS (UPDATE menos.callback_outbox o SET next_attempt_at = now() "
                "FROM next WHERE o.event_id = next.event_id RETURNING 1) "
                "SELECT pg_notify('menos_outbox', '') FROM released"
            )

    client = httpx.AsyncClient(
        transport=ssrf.PinnedTransport(allow_private=True), follow_redirects=False, trust_env=False
    )
    try:
        config = dispatcher.DispatcherConfig(
            timeout_s=10.0,
            backoff_s=2.0,
            poll_s=1.0,
            app_version=versions.app_version(),
            batch_size=batch_size,
        )
        worker = dispatcher.Dispatcher(
            config, repository.OutboxRepository(pool, queries), client, dsn=dsn
        )
        stop = asyncio.Event()
        cpu = time.process_time()
        started = time.perf_counter()
        running = asyncio.create_task(worker.run(stop))
        feeding = asyncio.create_task(feed()) if rate > 0 else None
        while True:
            looks += 1
            done = await watch.fetchval(
                "SELECT count(*) FROM menos.callback_outbox WHERE status <> 'pending'"
            )
            if done >= events or running.done():
                break
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        stop.set()
        await running
        if feeding is not None:
            await feeding
        cpu = time.process_time() - cpu
        looks += 1
        counts = await watch.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered, "
            "sum(attempts) AS attempts FROM menos.callback_outbox"
        )
        assert counts is not None
    finally:
        await client.aclose()
        await watch.close()
        await feeder.close()
        await pool.close()
    commits = await committed(admin_dsn, database) - before - looks
    delivered = counts["delivered"]
    return {
        "delivered": delivered,
        "attempts": int(counts["attempts"]),
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(delivered / seconds, 1),
        # Commits by the dispatcher alone: its claims, records, sweeps, looks and stats flushes.
        "commits_per_delivery": round(commits / delivered, 3) if delivered else None,
        # CPU time of this process (the dispatcher plus the benchmark's light polling).
        "cpu_ms_per_delivery": round(cpu * 1000 / delivered, 3) if delivered else None,
    }


async def with_database(admin_dsn: str, use: Callable[[str, str], Awaitable[Any]]) -> Any:
    name = await postgres.create_database(admin_dsn)
    dsn = postgres.with_database(admin_dsn, name)
    try:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn, db.Queries())
        finally:
            await conn.close()
        return await use(dsn, name)
    finally:
        await postgres.drop_database(admin_dsn, name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the JSON result and writes it to --output."""
    parser = argparse.ArgumentParser(prog="python -m bench.callbacks", description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32, help="deliveries in flight")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events released per second, each with a NOTIFY (a trickle); 0: all due at once",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    menos_logging.configure("json", level=logging.WARNING)  # one line per attempt would dominate

    port = free_port()
    receiver = multiprocessing.get_context("spawn").Process(
        target=serve_receiver, args=(port,), daemon=True
    )
    receiver.start()
    try:
        wait_listening(port)
        with (
            tempfile.TemporaryDirectory(prefix="menos-bench-") as home,
            postgres.server(Path(home) / "pg") as (how, admin_dsn),
        ):
            figures = asyncio.run(
                with_database(
                    admin_dsn,
                    lambda dsn, name: measure(
                        admin_dsn,
                        dsn,
                        name,
                        args.events,
                        args.batch_size,
                        f"http://127.0.0.1:{port}/hook",
                        args.rate,
                    ),
                )
            )
    finally:
        receiver.terminate()
        receiver.join(timeout=10)
    result = {
        "benchmark": "callbacks",
        "what": "signed callback deliveries per second, one dispatcher, receiver on 127.0.0.1",
        "events": args.events,
        "batch_size": args.batch_size,
        "rate": args.rate,
        **figures,
        "postgres": how,
        "menos_version": versions.app_version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n", encoding="utf-8")
    return 0 if figures["delivered"] == args.events else 1


if __name__ == "__main__":
    sys.exit(main())

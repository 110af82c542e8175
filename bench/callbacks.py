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


async def measure(dsn: str, events: int, batch_size: int, url: str) -> dict[str, Any]:
    """Create the events, then time one dispatcher delivering all of them."""
    pool = await db.create_pool(dsn, min_size=2, max_size=max(4, batch_size // 4 + 2))
    queries = db.Queries()
    client = httpx.AsyncClient(
        transport=ssrf.PinnedTransport(allow_private=True), follow_redirects=False, trust_env=False
    )
    try:
        await make_events(repository.Repository(pool, queries), events, url)
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
        started = time.perf_counter()
        running = asyncio.create_task(worker.run(stop))
        while True:
            done = await pool.fetchval(
                "SELECT count(*) FROM menos.callback_outbox WHERE status <> 'pending'"
            )
            if done >= events or running.done():
                break
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        stop.set()
        await running
        counts = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered, "
            "sum(attempts) AS attempts FROM menos.callback_outbox"
        )
        assert counts is not None
    finally:
        await client.aclose()
        await pool.close()
    return {
        "delivered": counts["delivered"],
        "attempts": int(counts["attempts"]),
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(counts["delivered"] / seconds, 1),
    }


async def with_database(admin_dsn: str, use: Callable[[str], Awaitable[Any]]) -> Any:
    name = await postgres.create_database(admin_dsn)
    dsn = postgres.with_database(admin_dsn, name)
    try:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn, db.Queries())
        finally:
            await conn.close()
        return await use(dsn)
    finally:
        await postgres.drop_database(admin_dsn, name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the JSON result and writes it to --output."""
    parser = argparse.ArgumentParser(prog="python -m bench.callbacks", description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32, help="deliveries in flight")
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
                    lambda dsn: measure(
                        dsn, args.events, args.batch_size, f"http://127.0.0.1:{port}/hook"
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

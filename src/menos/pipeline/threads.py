"""A job's blocking work in a daemon thread of its own, which a stopping process never waits for."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_daemon_thread(function: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """`function(*args)` in a new daemon thread, its result or exception in the returned future
    (cancelling the future abandons the result; the thread runs to its end).

    asyncio's default executor, which `asyncio.to_thread` uses, is waited for when
    `asyncio.run` ends and again when the interpreter exits: a worker stopped during a 60 s
    transcript download stayed alive after it had given its jobs back, past its grace period,
    until a supervisor killed it. A worker's job slots and a dispatcher's delivery slots bound
    the threads started here (their fetches' and deliveries' DNS lookups among them: a silent
    DNS server must not hold the pool); the API's lookups, which any client's request may
    start, keep the executor's bounded pool. Not for
    Rust extension code that releases the GIL (yake-rust): a call ending while the interpreter
    finalizes unwinds its frames, which aborts the process."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()  # structlog's bound values, as to_thread passes them

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # else the caller gave up on it
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, context.run(function, *args))
        except BaseException as exc:  # handed to the awaiting task, as to_thread does
            outcome = functools.partial(future.set_exception, exc)
        # RuntimeError: the loop closed meanwhile, and nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name=f"menos-{function.__name__}", daemon=True).start()
    return future

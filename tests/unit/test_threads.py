"""A job's blocking work in a daemon thread: results, errors, context, and a process that exits."""

from __future__ import annotations

import contextvars
import subprocess
import sys

import pytest

from menos.pipeline import threads

_BOUND: contextvars.ContextVar[str] = contextvars.ContextVar("bound", default="")


def _read_bound(suffix: str) -> str:
    return _BOUND.get() + suffix


def _fail() -> None:
    raise ValueError("no")


async def test_the_result_the_error_and_the_bound_context_come_back() -> None:
    """As with asyncio.to_thread: the value, the exception, and the caller's context vars."""
    _BOUND.set("job-1")
    assert await threads.in_daemon_thread(_read_bound, "!") == "job-1!"
    with pytest.raises(ValueError, match="no"):
        await threads.in_daemon_thread(_fail)


_STOPPING = """
import asyncio, time
from menos.pipeline import threads

async def main():
    try:
        async with asyncio.timeout(0.2):
            await threads.in_daemon_thread(time.sleep, 3600)
    except TimeoutError:
        print("gave up", flush=True)

asyncio.run(main())
"""


def test_a_process_does_not_wait_for_work_it_gave_up_on() -> None:
    """asyncio.run and the interpreter wait for the default executor's threads: a worker
    stopped during an hour-long download would have lived on for the hour."""
    done = subprocess.run(
        [sys.executable, "-c", _STOPPING], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == "gave up\n"

"""How a command that is not a service ends on SIGTERM: as Ctrl-C ends it, whatever it runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from menos import cli, settings
from menos.http import app as http_app


def test_sigterm_landing_in_an_event_loop_callback_still_ends_the_command() -> None:
    """SIGTERM arriving while the loop runs a callback (the database driver reading a reply)
    ends the command with Terminated (exit 143), instead of being swallowed by asyncio, which
    closed the connection and left the command failing on it (exit 1) or waiting on."""

    async def command() -> int:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[int] = loop.create_future()

        def data_received() -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # handled inside this callback
            reply.set_result(0)

        loop.call_soon(data_received)
        async with asyncio.timeout(5):
            await reply
        await asyncio.sleep(30)  # the rest of the command: never reached
        return 0

    previous = signal.signal(signal.SIGTERM, cli._terminate)  # as main() installs it
    try:
        with pytest.raises(cli.Terminated) as stopped:
            cli._run(command())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.signum == signal.SIGTERM


def test_a_stop_asked_before_the_api_listens_for_signals_still_stops_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM arriving once the migrations were applied but before uvicorn took over the
    signals (while the app was made) was swallowed: the API served on until a second signal,
    and a process manager restarting it waited for its stop timeout."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    def create_app(_conf: object) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # the stop, while the app is made
        return app

    async def migrate(_dsn: str) -> list[int]:
        return []

    @contextlib.contextmanager
    def database(_conf: object, *, create: bool = False) -> Iterator[str]:
        yield "postgresql://menos@127.0.0.1/menos"

    monkeypatch.setattr(cli, "_migrate", migrate)
    monkeypatch.setattr(cli, "database", database)
    monkeypatch.setattr(http_app, "create_app", create_app)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    conf = settings.from_env({"MENOS_PORT": str(port)}, dotenv=tmp_path / ".env")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Without the fix the API would serve for good: a second signal ends the test then.
    seconds: list[int] = []

    def second_signal() -> None:
        seconds.append(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    second = threading.Timer(30, second_signal)
    second.start()
    try:
        assert cli.cmd_api(conf, argparse.Namespace()) == 0
    finally:
        second.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert seconds == []


class _Killed(Exception):
    """What the default SIGTERM would have done: the process ends there."""


def _killed(_signum: int, _frame: object) -> None:
    raise _Killed


def test_a_stop_asked_while_the_api_migrates_ends_it_with_0_and_its_database_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM while the API's migrations waited for a lock (for as long as a psql session
    held it) killed the process: exit 143 instead of the services' 0, and an embedded server
    it had started was left running."""
    exited: list[str] = []

    async def migrate(_dsn: str) -> list[int]:
        os.kill(os.getpid(), signal.SIGTERM)  # the stop, while a migration waits for locks
        await asyncio.sleep(30)
        return []

    @contextlib.contextmanager
    def database(_conf: object, *, create: bool = False) -> Iterator[str]:
        try:
            yield "postgresql://menos@127.0.0.1/menos"
        finally:
            exited.append("database")

    def create_app(_conf: object) -> Any:
        raise AssertionError("the API was not to be made")

    monkeypatch.setattr(cli, "_migrate", migrate)
    monkeypatch.setattr(cli, "database", database)
    monkeypatch.setattr(http_app, "create_app", create_app)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    conf = settings.from_env({"MENOS_PORT": str(port)}, dotenv=tmp_path / ".env")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _killed)
    try:
        assert cli.cmd_api(conf, argparse.Namespace()) == 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert exited == ["database"]


# Runs `menos jobs list` as `python -m menos` does, with SIGINT raised inside its imports
# (as menos.cli imports menos.tools): the Ctrl-C lands there whatever the machine's speed.
_INTERRUPTED_WHILE_IMPORTING = """
import importlib.abc, os, runpy, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "menos.tools":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["menos", "jobs", "list"]
runpy.run_module("menos", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_python_loads_a_command_shows_no_traceback() -> None:
    """Ctrl-C in the first half second of `make run` (or any command), while Python was still
    importing it, printed a KeyboardInterrupt traceback of the imports; it exits 130 quietly,
    as a command interrupted later does."""
    command = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_WHILE_IMPORTING],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (command.returncode, command.stderr.decode()) == (130, "")

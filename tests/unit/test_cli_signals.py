"""How a command that is not a service ends on SIGTERM: as Ctrl-C ends it, whatever it runs."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from menos import cli


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

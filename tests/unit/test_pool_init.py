"""A pool connection whose setup gets no answer is dropped at the caller's deadline."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from menos import db

_SSL_REQUEST, _CANCEL_REQUEST = 80877103, 80877102


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


async def _silent_pooler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A pooler that takes the login but has no server for it: queries and cancel requests
    get no answer (PgBouncer paused, in safe shutdown, or its pool full)."""
    try:
        while True:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            (code,) = struct.unpack("!I", body[:4])
            if code == _SSL_REQUEST:
                writer.write(b"N")
                continue
            if code == _CANCEL_REQUEST:
                await reader.read()  # held open, never answered
                return
            writer.write(
                _message(b"R", struct.pack("!I", 0))
                + _message(b"S", b"server_version\x0016.0\x00")
                + _message(b"S", b"client_encoding\x00UTF8\x00")
                + _message(b"S", b"integer_datetimes\x00on\x00")
                + _message(b"K", struct.pack("!II", 4242, 7))
                + _message(b"Z", b"I")
            )
            await reader.read()  # every query goes unanswered
            return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


async def test_a_connection_whose_setup_is_never_answered_is_dropped_at_the_deadline() -> None:
    """The pool closed such a connection gracefully, which waited for the cancel of its
    setup query up to the 60 s command timeout: behind a paused PgBouncer an API request
    answered 503 after 70 s, not at its 10 s deadline."""
    server = await asyncio.start_server(_silent_pooler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dsn = f"postgresql://menos@127.0.0.1:{port}/menos"
    # As the API makes its pool: each new connection is set up with a statement timeout.
    pool = await db.create_pool(dsn, min_size=0, statement_timeout_s=5.0)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await pool.acquire()
        assert time.monotonic() - started < 30  # the command timeout is 60 s
    finally:
        pool.terminate()
        server.close()

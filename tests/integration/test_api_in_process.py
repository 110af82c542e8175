"""The API in this process, served by uvicorn on 127.0.0.1: what a client holding back its
body or doubling its headers gets."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
import uvicorn

from menos import db, settings
from menos.http import app, schemas, serving
from menos.queue import repository


@contextlib.asynccontextmanager
async def served(pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """The API's base URL, on its own port, for as long as the context lasts. The socket
    listens before uvicorn starts, so a connection made meanwhile waits in its backlog."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}), pool=pool)
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        serving.guarded(api), lifespan="on", log_config=None, http=serving.HeadersInTime
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def sent_raw(url: str, request: bytes, *, timeout: float = 10) -> bytes:
    """What the API at `url` answers to `request` (raw bytes, sent at once), read to the
    server's close."""
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout=timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_body_held_back_past_the_deadline_is_a_408_and_stores_nothing(
    pool: asyncpg.Pool[Any], repo: repository.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is checked when the headers arrive: a body that takes longer than
    BODY_DEADLINE_S (a revoked key's, say) is refused, the connection closed."""
    monkeypatch.setattr(schemas, "BODY_DEADLINE_S", 0.5)
    key = (await repo.create_key("alice", "user")).api_key
    body = b'{"text": "held back"}'
    async with served(pool) as url:
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        writer.write(
            b"POST /api/v1/content HTTP/1.1\r\nHost: menos\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5]
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # to the server's close
        writer.close()
    head, _, problem = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower()
    assert b"did not arrive within 0.5 s" in problem
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


@pytest.mark.parametrize(("gap_s", "status"), [(0.05, 202), (0.4, 408)])
async def test_the_deadline_is_for_the_whole_body_not_each_piece(
    pool: asyncpg.Pool[Any],
    repo: repository.Repository,
    monkeypatch: pytest.MonkeyPatch,
    gap_s: float,
    status: int,
) -> None:
    """Four pieces, each well within the 1 s deadline: read when they all arrive within it,
    a 408 when together they take longer (a sender dripping bytes cannot go on forever)."""
    monkeypatch.setattr(schemas, "BODY_DEADLINE_S", 1.0)
    key = (await repo.create_key("alice", "user")).api_key

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b'{"text": ', b'"in ', b"pie", b'ces"}'):
            yield piece
            await asyncio.sleep(gap_s)

    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        try:
            answer = await client.post(
                "/api/v1/content",
                content=pieces(),
                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            )
        except httpx.TransportError:  # the server answered and closed while we still sent
            assert status == 408
        else:
            assert answer.status_code == status, answer.text
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == (status == 202)


async def test_two_authorization_headers_are_refused(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """With two keys, a proxy in front and the API could each act on a different one: the
    request is refused, whichever order and whether or not both are valid."""
    alice = (await repo.create_key("alice", "user")).api_key
    bob = (await repo.create_key("bob", "user")).api_key
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        for first, second in ((alice, bob), (bob, alice), (alice, alice)):
            answer = await client.get(
                "/api/v1/jobs",
                headers=[
                    ("authorization", f"Bearer {first}"),
                    ("authorization", f"Bearer {second}"),
                ],
            )
            assert answer.status_code == 401, answer.text
            assert answer.json()["detail"] == "send one Authorization header, not several"
        alone = await client.get("/api/v1/jobs", headers={"authorization": f"Bearer {alice}"})
        assert alone.status_code == 200


async def test_a_key_is_only_taken_between_spaces_and_tabs(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """Spaces and tabs around the key are HTTP's optional whitespace; anything else next to
    it (a no-break space, NEL: Unicode whitespace) makes another key, and a control character
    (a file separator) makes no valid request at all."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        for header, status in (
            (f"Bearer \t {key}", 200),
            (f"Bearer \xa0{key}\xa0", 401),
            (f"Bearer {key}\x85", 401),
            (f"Bearer {key}\x1c", 400),
        ):
            answer = await client.get(
                "/api/v1/jobs", headers=[(b"authorization", header.encode("latin-1"))]
            )
            assert answer.status_code == status, (header, answer.text)
            problem = answer.headers["content-type"] == "application/problem+json"
            assert answer.status_code == 200 or problem, answer.headers


async def test_a_database_that_refuses_writes_is_not_ready_and_answers_503(
    pg_admin_dsn: str, database_url: str, repo: repository.Repository
) -> None:
    """A read-only database (a standby after a failover, or default_transaction_read_only):
    /ready said 200 while every submission was a 500 and every claim a traceback. It is
    `read_only` and 503, and a write is 503 problem details, as for a database that is away."""
    key = (await repo.create_key("alice", "user")).api_key
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        read_only = await db.create_pool(database_url, min_size=0, max_size=2)
        async with served(read_only) as url, httpx.AsyncClient(base_url=url) as client:
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json() == {
                "status": "unavailable",
                "database": "read_only",
                "pending_migrations": [],
            }
            submitted = await client.post(
                "/api/v1/content",
                json={"text": "# Note"},
                headers={"authorization": f"Bearer {key}"},
            )
            assert submitted.status_code == 503, submitted.text
            assert submitted.headers["content-type"] == "application/problem+json"
        await db.close_pool(read_only)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await admin.close()
    assert await repo.principal(key) is not None


async def test_a_database_migrated_by_another_version_is_not_ready(
    pool: asyncpg.Pool[Any],
) -> None:
    """A database whose applied migration is not this code's file (restored from another
    version's backup, say): workers and a restarted API refuse it, but /ready said 200."""
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/ready")).status_code == 200
        await pool.execute(
            "UPDATE menos.schema_migrations SET checksum = 'other'"
            " WHERE version = (SELECT max(version) FROM menos.schema_migrations)"
        )
        ready = await client.get("/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json() == {
        "status": "unavailable",
        "database": "mismatch",
        "pending_migrations": [],
    }


@pytest.mark.parametrize(
    ("errcode", "message", "status"),
    [
        # A full disk cannot write until space is made: every submission answered 500
        # "unexpected error" with a traceback. It is a 503 with Retry-After, as for a
        # database that is away.
        ("disk_full", "could not extend file: No space left on device", 503),
        # A limit the operator set (temp_file_limit: SQLSTATE 53400, class 53 as a full disk
        # is) fails the same way each time: a 503 "try again shortly" would be followed for
        # ever.
        ("configuration_limit_exceeded", "temporary file size exceeds temp_file_limit", 500),
    ],
)
async def test_a_full_disk_answers_503_and_a_configured_limit_does_not(
    pool: asyncpg.Pool[Any], repo: repository.Repository, errcode: str, message: str, status: int
) -> None:
    key = (await repo.create_key("alice", "user")).api_key
    await pool.execute(
        "CREATE FUNCTION menos.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = '{errcode}'; END $$;"
        " CREATE TRIGGER test_refuse BEFORE INSERT ON menos.content"
        " FOR EACH ROW EXECUTE FUNCTION menos.test_refuse()"
    )
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        submitted = await client.post(
            "/api/v1/content",
            json={"text": "# Note"},
            headers={"authorization": f"Bearer {key}"},
        )
    assert submitted.status_code == status, submitted.text
    assert submitted.headers["content-type"] == "application/problem+json"
    assert submitted.headers.get("retry-after") == ("1" if status == 503 else None)
    assert await pool.fetchval("SELECT count(*) FROM menos.content") == 0


async def test_http_metrics_count_every_request_and_no_invented_500(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """Paths and methods no route serves (404, 405) were never counted, an upload its client
    abandoned was counted as a 500 nobody was sent, and any method token made a series."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.delete("/health")).status_code == 405
        assert (await client.request("PROPFIND", "/health")).status_code == 405
        _reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        writer.write(
            b"POST /api/v1/content HTTP/1.1\r\nHost: menos\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"text": '
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        abandoned = 'menos_http_requests_total{method="POST",route="/api/v1/content",status="499"}'
        for _ in range(100):
            scraped = (await client.get("/metrics")).text
            if abandoned in scraped:
                break
            await asyncio.sleep(0.05)
    counted = {
        line.rsplit(" ", 1)[0]
        for line in scraped.splitlines()
        if line.startswith("menos_http_requests_total{")
    }
    assert {
        'menos_http_requests_total{method="GET",route="unmatched",status="404"}',
        'menos_http_requests_total{method="DELETE",route="unmatched",status="405"}',
        'menos_http_requests_total{method="other",route="unmatched",status="405"}',
        abandoned,
    } <= counted, counted
    assert not any('status="500"' in line for line in counted), counted


@pytest.mark.parametrize("route", ["/api/v1/ingest", "/api/v1/content"])
async def test_an_upload_its_client_abandoned_is_logged_as_no_error(
    pool: asyncpg.Pool[Any], repo: repository.Repository, route: str
) -> None:
    """A client gone before its body arrived (a dropped connection, a Ctrl-C) was logged as
    `request_unhandled_error` with a traceback, as if menos had a bug; it is an info line."""
    key = (await repo.create_key("alice", "user")).api_key
    with structlog.testing.capture_logs() as logs:
        async with served(pool) as url:
            _reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
            writer.write(
                b"POST " + route.encode() + b" HTTP/1.1\r\nHost: menos\r\n"
                b"Authorization: Bearer " + key.encode() + b"\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"text": '
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if any(e["event"].startswith("request_") for e in logs):
                    break
                await asyncio.sleep(0.05)
    events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("request_")]
    assert events == [("request_client_gone", "info")], logs
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (nothing more to read, or a write of ours
    refused) rather than answer."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=10) == b""
    except ConnectionError:
        return True


async def test_a_request_head_must_arrive_in_time(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection sending nothing, or its headers a byte now and then, held a file
    descriptor forever (enough of them and /health went unanswered): the head of each request
    must arrive within HEADERS_DEADLINE_S of the connection or of the previous answer."""
    # Wide margins: the client and the server share this loop, and a busy machine that
    # stalls it runs the server's deadline in the same turn as the client's next write.
    monkeypatch.setattr(serving, "HEADERS_DEADLINE_S", 2.0)
    async with served(pool) as url:
        address = url.removeprefix("http://").split(":")
        silent_reader, silent = await asyncio.open_connection(*address)
        trickle_reader, trickle = await asyncio.open_connection(*address)
        kept_reader, kept = await asyncio.open_connection(*address)
        for _ in range(5):  # each head in time after the answer before it, not the first
            kept.write(b"GET /health HTTP/1.1\r\nHost: menos\r\n\r\n")
            assert (await kept_reader.readuntil(b"}")).startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.5)
        trickle.write(b"GET /health HTTP/1.1\r\n")
        with contextlib.suppress(ConnectionError):  # until the server has closed it
            for _ in range(30):  # well past the deadline, a header line at a time
                trickle.write(b"X-Slow: 1\r\n")
                await trickle.drain()
                await asyncio.sleep(0.1)
        assert await closed_by_server(silent_reader)
        assert await closed_by_server(trickle_reader)
        for writer in (silent, trickle, kept):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_connection_answered_before_its_body_arrived_is_held_no_longer(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request answered before its body was read (a 401) held its connection forever: the
    rest of its body trickling in, or nothing at all once the body was complete. That body
    and the next head must arrive within HEADERS_DEADLINE_S of the answer."""
    monkeypatch.setattr(serving, "HEADERS_DEADLINE_S", 0.5)
    head = b"POST /api/v1/ingest HTTP/1.1\r\nHost: menos\r\nContent-Type: application/json\r\n"
    async with served(pool) as url:
        address = url.removeprefix("http://").split(":")
        idle_reader, idle = await asyncio.open_connection(*address)
        idle.write(head + b"Content-Length: 10\r\n\r\n{")
        assert (await idle_reader.readuntil(b"}")).startswith(b"HTTP/1.1 401 ")
        idle.write(b'"url": 1}')  # the rest of the body, then nothing
        trickle_reader, trickle = await asyncio.open_connection(*address)
        trickle.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
        assert (await trickle_reader.readuntil(b"}")).startswith(b"HTTP/1.1 401 ")
        with contextlib.suppress(ConnectionError):  # until the server has closed it
            for _ in range(30):  # well past the deadline, a chunk at a time
                trickle.write(b"1\r\nx\r\n")
                await trickle.drain()
                await asyncio.sleep(0.1)
        assert await closed_by_server(idle_reader)
        assert await closed_by_server(trickle_reader)
        for writer in (idle, trickle):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_client_that_never_reads_its_answers_is_dropped(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending requests and reading none of the answers held its connection, and
    megabytes of the server's send buffer, forever: one that reads nothing for
    UNREAD_DEADLINE_S is dropped before all its answers are sent."""
    monkeypatch.setattr(serving, "UNREAD_DEADLINE_S", 1.0)
    requests = 400  # some 10 MB of answers: more than the kernel's buffers hold
    async with served(pool) as url:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        writer.write(b"GET /schema/openapi.json HTTP/1.1\r\nHost: menos\r\n\r\n" * requests)
        await writer.drain()
        await asyncio.sleep(8)  # reading nothing, well past the deadline
        received = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=10):
                received += chunk
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert received.count(b"HTTP/1.1 200 ") < requests


async def test_a_head_request_keeps_its_connection_usable(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """HEAD is answered as GET without the body; the server, told GET, waited for that body,
    failed the answer and closed the connection: the next request on it was lost."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url:
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        for path in ("/health", "/api/v1/jobs", "/nowhere"):
            for method in ("HEAD", "GET"):
                writer.write(
                    f"{method} {path} HTTP/1.1\r\nHost: menos\r\n"
                    f"Authorization: Bearer {key}\r\n\r\n".encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                assert length > 0, head
                if method == "GET":  # HEAD: no body follows, the next answer does
                    await asyncio.wait_for(reader.readexactly(length), timeout=10)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_request_head_over_its_limit_is_refused_and_its_connection_closed(
    pool: asyncpg.Pool[Any],
) -> None:
    """The parser keeps a header it has not seen the end of: one endless header line, sent
    within the head's deadline, grew the server's memory without bound. A head over
    HEAD_MAX_BYTES is a 431; one just under it is served."""
    async with served(pool) as url:
        address = url.removeprefix("http://").split(":")
        for size, status in ((serving.HEAD_MAX_BYTES - 1024, b"200"), (1 << 20, b"431")):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"GET /health HTTP/1.1\r\nHost: menos\r\nX-Big: " + b"a" * size)
            with contextlib.suppress(ConnectionError):
                writer.write(b"\r\n\r\n")
                await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"}"), timeout=10)
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
            if status == b"431":
                assert b"the request head is over 65536 bytes" in answer
                assert await closed_by_server(reader)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_request_with_two_framings_is_refused_and_its_connection_closed(
    pool: asyncpg.Pool[Any],
) -> None:
    """Content-Length and Transfer-Encoding together: a proxy in front may read the body by
    the other one, and take what follows for another request (RFC 9112 §6.1)."""
    async with served(pool) as url:
        answer = await sent_raw(
            url,
            b"POST /api/v1/content HTTP/1.1\r\nHost: menos\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: menos\r\n\r\n",
        )
    head, _, problem = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
    assert b"Transfer-Encoding can't be present with Content-Length" in problem
    assert b"HTTP/1.1 200" not in answer


async def test_a_request_the_shutdown_cancels_is_answered_503() -> None:
    """A request still waiting (on a frozen database, say) when the shutdown's grace ends
    got uvicorn's plain-text 500: it is a 503 problem, and its connection closes."""
    sent: list[dict[str, Any]] = []
    waiting = asyncio.Event()

    async def frozen(scope: Any, receive: Any, send: Any) -> None:
        waiting.set()
        await asyncio.Event().wait()

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"host", b"menos")]}
    task = asyncio.create_task(serving.guarded(frozen)(scope, None, send))  # type: ignore[arg-type]
    await waiting.wait()
    task.cancel()  # as uvicorn does when the grace has ended
    await task
    start, body = sent
    assert start["status"] == 503
    assert (b"connection", b"close") in start["headers"]
    assert b"shutting down" in body["body"]


async def test_a_database_made_writable_again_is_ready_without_restarting_the_api(
    pg_admin_dsn: str, database_url: str, repo: repository.Repository
) -> None:
    """Sessions opened while default_transaction_read_only was set keep it: once it is reset,
    /ready said read_only and every write 503 until bin/api was restarted."""
    key = (await repo.create_key("alice", "user")).api_key
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    pool = await db.create_pool(database_url, min_size=0, max_size=2)
    try:
        async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/ready")).status_code == 503
            note = {"json": {"text": "# Note"}, "headers": {"authorization": f"Bearer {key}"}}
            assert (await client.post("/api/v1/content", **note)).status_code == 503
            await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            ready = await client.get("/ready")
            assert ready.status_code == 200, ready.text
            submitted = await client.post("/api/v1/content", **note)
            assert submitted.status_code == 202, submitted.text
    finally:
        await db.close_pool(pool)
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await admin.close()


async def _post_titled_form(
    pool: asyncpg.Pool[Any], repo: repository.Repository, title_part: bytes
) -> httpx.Response:
    """An upload whose `title` part is `title_part` (its headers, a blank line, its value)."""
    key = (await repo.create_key("alice", "user")).api_key
    form = (
        b'--b\r\nContent-Disposition: form-data; name="title"\r\n' + title_part + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="n.md"\r\n\r\n# note\r\n'
        b"--b--\r\n"
    )
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        return await client.post(
            "/api/v1/content",
            content=form,
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "multipart/form-data; boundary=b",
            },
        )


@pytest.mark.parametrize(
    "charset",
    [
        *(b"bogus", b"hex", b"base64", b"undefined", b"utf-7"),
        *(b"punycode", b"idna", b"latin-1", b'"utf-8\x00"'),
    ],
)
async def test_a_form_field_declared_in_another_charset_is_a_415_before_it_is_decoded(
    pool: asyncpg.Pool[Any], repo: repository.Repository, charset: bytes
) -> None:
    """A text field whose part declares a charset other than UTF-8 is refused, not decoded
    with it: a codec that is no text codec (hex, bogus, undefined, a NUL in the name) answered
    500, and punycode and idna decode a field of a few hundred KB for many seconds on the
    event loop."""
    answer = await _post_titled_form(
        pool, repo, b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\nab-cd"
    )
    assert answer.status_code == 415, answer.text
    assert answer.json()["errors"] == [
        {"field": "title", "message": "form fields must be UTF-8 text"}
    ]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


@pytest.mark.parametrize(
    ("route", "body", "media"),
    [
        ("/api/v1/ingest", b'{"url": "https://example.com/coded"}', "application/json"),
        ("/api/v1/content", b'{"text": "# Coded"}', "application/json"),
        (
            "/api/v1/content",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="n.md"\r\n\r\n'
            b"# Coded\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
    ],
)
@pytest.mark.parametrize("compress", [True, False])
async def test_a_body_in_a_content_coding_is_a_415_and_stores_nothing(
    pool: asyncpg.Pool[Any],
    repo: repository.Repository,
    route: str,
    body: bytes,
    media: str,
    compress: bool,
) -> None:
    """Content-Encoding was ignored: a gzipped body was called malformed JSON (an invalid
    character at byte 0), and a body labelled gzip but sent plain was stored as it was."""
    key = (await repo.create_key("alice", "user")).api_key
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": media,
        "content-encoding": "gzip",
    }
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        sent = gzip.compress(body) if compress else body
        answer = await client.post(route, content=sent, headers=headers)
    assert answer.status_code == 415, answer.text
    assert "Content-Encoding" in answer.json()["detail"]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


@pytest.mark.parametrize("charset", [b"hex", b"punycode"])
async def test_a_field_in_another_charset_before_a_malformed_part_is_a_415(
    pool: asyncpg.Pool[Any], repo: repository.Repository, charset: bytes
) -> None:
    """A malformed part after the field does not skip its check: Litestar's parser decodes
    the parts before the fault (hex answered 500, punycode stalled the event loop)."""
    key = (await repo.create_key("alice", "user")).api_key
    form = (
        b'--b\r\nContent-Disposition: form-data; name="title"\r\n'
        b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\nab-cd\r\n"
        b"--b\r\nno header here\r\n\r\nx"
    )
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        answer = await client.post(
            "/api/v1/content",
            content=form,
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "multipart/form-data; boundary=b",
            },
        )
    assert answer.status_code == 415, answer.text
    assert answer.json()["errors"] == [
        {"field": "title", "message": "form fields must be UTF-8 text"}
    ]


async def test_a_form_field_with_an_empty_charset_is_read_as_utf_8(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """`charset=""` names no charset: the form parser reads such a field as UTF-8, as it did
    before the charset check, which refused it with a 415."""
    answer = await _post_titled_form(
        pool, repo, b'Content-Type: text/plain; charset=""\r\n\r\nCaf\xc3\xa9'
    )
    assert answer.status_code == 202, answer.text
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT title FROM menos.content") == "Caf\u00e9"


async def test_a_form_of_utf8_fields_is_taken_whatever_its_file_declares(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """Only text fields are decoded with their charset: the file is read as bytes (UTF-8)."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        plain = await client.post(
            "/api/v1/content",
            files={"file": ("n.md", b"# note", "text/markdown; charset=punycode")},
            data={"title": "Caf\u00e9", "tags": "a, b"},
            headers={"authorization": f"Bearer {key}"},
        )
    assert plain.status_code == 202, plain.text


async def test_an_upload_whose_file_part_has_no_file_name_is_the_note(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """A `file` part sent as a text field, without a file name (`curl -F 'file=<note.md'`),
    is the note itself: stored, and titled by its first heading."""
    key = (await repo.create_key("alice", "user")).api_key
    async with (
        served(pool) as url,
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as client,
    ):
        answer = await client.post(
            "/api/v1/content", files={"file": (None, "# Queues\n\nText.")}, data={"tags": "a"}
        )
    assert answer.status_code == 202, answer.text
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT title, tags, body FROM menos.content")
    assert row is not None
    assert (row["title"], row["tags"], row["body"]) == ("Queues", ["a"], "# Queues\n\nText.")


async def test_an_upload_tag_fault_names_the_tags_value_the_client_sent(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """Upload tags may be comma-separated: a bad one is named by the index of the `tags` value
    the client sent, not by its place among the tags split out of them."""
    key = (await repo.create_key("alice", "user")).api_key
    long_tag = "y" * 101
    async with (
        served(pool) as url,
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as client,
    ):
        form = await client.post(
            "/api/v1/content",
            files={"file": ("n.md", b"# note", "text/markdown")},
            data={"tags": ["a,b,c", long_tag]},
        )
        blanks = await client.post(
            "/api/v1/content", json={"text": "# note", "tags": ["", " ", long_tag]}
        )
    for answer, field in ((form, "tags[1]"), (blanks, "tags[2]")):
        assert answer.status_code == 400, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == [field]


async def test_a_400_names_every_invalid_field_not_only_the_first(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """A submission with several invalid fields lists each in `errors` (DESIGN §4), so a
    client fixes them in one round trip, and stores nothing."""
    key = (await repo.create_key("alice", "user")).api_key
    headers = {"authorization": f"Bearer {key}"}
    async with served(pool) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        ingest = await client.post(
            "/api/v1/ingest",
            json={"url": "ftp://example.com/a", "title": "t" * 501, "callback_url": " "},
        )
        upload = await client.post(
            "/api/v1/content", json={"text": " ", "tags": ["x" * 101], "callback_url": " "}
        )
    assert ingest.status_code == 400, ingest.text
    assert [e["field"] for e in ingest.json()["errors"]] == ["url", "title", "callback_url"]
    assert upload.status_code == 400, upload.text
    assert [e["field"] for e in upload.json()["errors"]] == ["text", "tags[0]", "callback_url"]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


async def test_a_note_whose_frontmatter_tag_is_too_long_is_named_beside_the_other_faults(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """An upload whose frontmatter holds a tag over 100 characters names its `file` (or
    `text`) in `errors` in the field's place, also when a title or a tag of the request fails
    too, and stores nothing."""
    key = (await repo.create_key("alice", "user")).api_key
    headers = {"authorization": f"Bearer {key}"}
    note = f"---\ntags: [{'x' * 101}]\n---\nbody\n"
    async with served(pool) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        form = await client.post(
            "/api/v1/content",
            files={"file": ("n.md", note.encode(), "text/markdown")},
            data={"title": "t" * 501, "tags": ["y" * 101]},
        )
        body = await client.post(
            "/api/v1/content", json={"text": note, "title": "t" * 501, "tags": ["y" * 101]}
        )
    assert form.status_code == 400, form.text
    assert [e["field"] for e in form.json()["errors"]] == ["file", "title", "tags[0]"]
    assert body.status_code == 400, body.text
    assert [e["field"] for e in body.json()["errors"]] == ["text", "title", "tags[0]"]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


async def test_a_400_names_every_invalid_list_filter_not_only_the_first(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """A list request with several bad query parameters lists each in `errors` (DESIGN §4),
    in the order of the route's parameters."""
    key = (await repo.create_key("alice", "user")).api_key
    headers = {"authorization": f"Bearer {key}"}
    async with served(pool) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        jobs = await client.get("/api/v1/jobs?status=done&limit=500&cursor=zz")
        content = await client.get(
            "/api/v1/content?processing_status=done&content_type=pdf&tag=%20&limit=0&cursor=zz"
        )
    assert jobs.status_code == 400, jobs.text
    assert [e["field"] for e in jobs.json()["errors"]] == ["status", "limit", "cursor"]
    assert content.status_code == 400, content.text
    assert [e["field"] for e in content.json()["errors"]] == [
        "processing_status",
        "content_type",
        "tag",
        "limit",
        "cursor",
    ]


async def test_a_400_names_each_invalid_tag(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """`tags[0]` and `tags[2]` are two invalid fields: both are listed, with the others."""
    key = (await repo.create_key("alice", "user")).api_key
    headers = {"authorization": f"Bearer {key}"}
    long = "x" * 101
    async with served(pool) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        ingest = await client.post(
            "/api/v1/ingest",
            json={"url": "ftp://example.com/a", "tags": [long, "ok", long], "callback_url": " "},
        )
        upload = await client.post(
            "/api/v1/content", json={"text": "note", "tags": [long, "ok", f"a, {long}"]}
        )
    assert ingest.status_code == 400, ingest.text
    fields = [e["field"] for e in ingest.json()["errors"]]
    assert fields == ["url", "tags[0]", "tags[2]", "callback_url"]
    assert ingest.json()["detail"].count("tags[2]") == 1
    assert upload.status_code == 400, upload.text
    assert [e["field"] for e in upload.json()["errors"]] == ["tags[0]", "tags[2]"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "message"),
    [
        ("GET", "/api/v1/jobs/{job}?verbose=yes", None, "verbose", "must be true or false"),
        ("POST", "/api/v1/content/{content}/reprocess?force=on", None, "force",
         "must be true or false"),
        ("GET", "/api/v1/jobs?limit=abc", None, "limit", "must be a whole number"),
        ("GET", "/api/v1/jobs?limit=1e1", None, "limit", "must be a whole number"),
        ("GET", "/api/v1/content?limit=2.0", None, "limit", "must be a whole number"),
        ("GET", "/api/v1/jobs/not-a-uuid", None, "job_id", "must be a UUID"),
        ("GET", "/api/v1/jobs?content_id=nope", None, "content_id", "must be a UUID"),
        ("GET", "/api/v1/content?tag=%20", None, "tag", "must not be blank"),
        ("POST", "/api/v1/ingest", {}, "url", "is required"),
        ("POST", "/api/v1/ingest", {"url": 5}, "url", "must be a string"),
        ("POST", "/api/v1/ingest", {"url": "https://a.example/", "data_tier": "huge"},
         "data_tier", "must be compact or full"),
        ("POST", "/api/v1/content", {"title": "x"}, "text", "is required"),
        ("POST", "/api/v1/content", {"text": "x", "tags": ["a", 3]}, "tags[1]", "must be a string"),
        ("POST", "/api/v1/content", {"text": "x", "data_tier": "big"}, "data_tier",
         "must be compact or full"),
    ],
)  # fmt: skip
async def test_a_bad_value_is_named_in_the_apis_words(
    pool: asyncpg.Pool[Any],
    repo: repository.Repository,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
    message: str,
) -> None:
    """The validator's own words reached clients: `?force=yes` was "Expected `bool`, got
    `str`" (everything in a query string is a string), a bad `data_tier` "Invalid enum value
    'huge'" in JSON but "must be compact or full" in a form; and `?limit=1e1` was taken as 10."""
    key = (await repo.create_key("alice", "user")).api_key
    async with (
        served(pool) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        submitted = (await client.post("/api/v1/content", json={"text": "# a"})).json()
        target = path.format(job=submitted["job_id"], content=submitted["content_id"])
        answer = await client.request(method, target, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"] == [{"field": field, "message": message}]
    assert answer.json()["detail"] == f"{field}: {message}"


async def test_the_tag_filter_is_trimmed_as_tags_are(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """Submitted tags are trimmed; `?tag=%20notes%20` matched nothing, and `?tag=` listed
    everything (it is a 400 above)."""
    key = (await repo.create_key("alice", "user")).api_key
    async with (
        served(pool) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        await client.post("/api/v1/content", json={"text": "# a", "tags": [" notes "]})
        await client.post("/api/v1/content", json={"text": "# b", "tags": ["other"]})
        listed = await client.get("/api/v1/content", params={"tag": " notes "})
    assert listed.status_code == 200, listed.text
    assert [item["tags"] for item in listed.json()["items"]] == [["notes"]]


async def test_the_bytes_after_a_request_asking_to_upgrade_are_still_http(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """The parser stops at the end of a request with `Connection: Upgrade` and the rest of
    its read was dropped: a request pipelined after it went unanswered, and a body arriving
    in the next read was taken for a request (here a GET answered 200 with alice's jobs)."""
    key = (await repo.create_key("alice", "user")).api_key
    inner = b"GET /api/v1/jobs HTTP/1.1\r\nHost: menos\r\nAuthorization: Bearer " + key.encode()
    inner += b"\r\n\r\n"
    upgrade = b"GET /health HTTP/1.1\r\nHost: menos\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
    post = b"POST /health HTTP/1.1\r\nHost: menos\r\nContent-Length: %d\r\n\r\n" % len(inner)
    async with served(pool) as url:
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        writer.write(upgrade + post)
        await writer.drain()
        await asyncio.sleep(0.3)  # the body in a read of its own
        writer.write(inner)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"}"), timeout=10)
        second = await asyncio.wait_for(reader.readuntil(b"}"), timeout=10)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert first.startswith(b"HTTP/1.1 200 "), first
    assert second.startswith(b"HTTP/1.1 405 "), second  # POST /health, its body unread


@pytest.mark.parametrize("framing", [b"Content-Length: %d", b"Transfer-Encoding: chunked"])
async def test_the_body_of_a_request_asking_to_upgrade_is_never_read_as_a_request(
    pool: asyncpg.Pool[Any], repo: repository.Repository, framing: bytes
) -> None:
    """The parser stops at the head's end of a request with `Connection: Upgrade`, body or
    not: the body was read as the next request (here a GET answered 200 with alice's jobs),
    and the request itself served without it."""
    key = (await repo.create_key("alice", "user")).api_key
    inner = b"GET /api/v1/jobs HTTP/1.1\r\nHost: menos\r\nAuthorization: Bearer " + key.encode()
    inner += b"\r\n\r\n"
    if b"chunked" in framing:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    else:
        framing, body = framing % len(inner), inner
    upgrade = b"POST /api/v1/content HTTP/1.1\r\nHost: menos\r\nConnection: Upgrade\r\n"
    upgrade += b"Upgrade: h2c\r\nContent-Type: application/json\r\n" + framing + b"\r\n\r\n"
    async with served(pool) as url:
        answer = await sent_raw(url, upgrade + body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"a request asking to switch protocols must not have a body" in answer, answer
    assert b"HTTP/1.1 200 " not in answer and b"job_id" not in answer, answer


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/ingest", b'{"url": "https://a.example/", "url": "https://b.example/"}', "url"),
        ("/api/v1/content", b'{"text": "# A", "title": "a", "text": "# B"}', "text"),
        (
            "/api/v1/content/{content_id}/reprocess",
            b'{"data_tier": "full", "data_tier": "compact"}',
            "data_tier",
        ),
    ],
)
async def test_a_json_key_given_twice_is_refused_naming_it(
    pool: asyncpg.Pool[Any], repo: repository.Repository, path: str, body: bytes, field: str
) -> None:
    """A JSON body giving a key twice was served with the last value, where a query
    parameter or form field given twice is refused: which of two URLs or texts was meant is
    not for the server to pick."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        note = await client.post("/api/v1/content", json={"text": "# Note"}, headers=auth)
        path = path.format(content_id=note.json()["content_id"])
        before = await pool.fetchval("SELECT count(*) FROM menos.pipeline_job")
        answer = await client.post(path, content=body, headers=auth)
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"] == [{"field": field, "message": "given more than once"}]
    assert await pool.fetchval("SELECT count(*) FROM menos.pipeline_job") == before


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"identity, chunked", b"x-rot13 , Chunked"])
async def test_a_transfer_coding_other_than_chunked_is_501_and_nothing_is_stored(
    pool: asyncpg.Pool[Any], repo: repository.Repository, coding: bytes
) -> None:
    """`Transfer-Encoding: gzip, chunked` was served as chunked alone: its body taken as it
    stands (here a note stored, 202), where a client meant it compressed."""
    key = (await repo.create_key("alice", "user")).api_key
    body = b'{"text": "# Note"}'
    request = b"POST /api/v1/content HTTP/1.1\r\nHost: menos\r\nAuthorization: Bearer "
    request += key.encode() + b"\r\nContent-Type: application/json\r\n"
    request += b"Transfer-Encoding: " + coding + b"\r\n\r\n"
    request += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    async with served(pool) as url:
        answer = await sent_raw(url, request)
    assert answer.startswith(b"HTTP/1.1 501 "), answer
    assert b"application/problem+json" in answer, answer
    assert b"is not supported" in answer, answer
    assert await pool.fetchval("SELECT count(*) FROM menos.content") == 0


async def test_pipelined_requests_over_the_head_limit_together_are_served(
    pool: asyncpg.Pool[Any],
) -> None:
    """Small requests sent back to back, more than HEAD_MAX_BYTES of them in one read, were
    refused as one head over the limit (a 431, the connection reset) when that read ended
    within a head: only the bytes of a head count towards its limit."""
    request = b"GET /health HTTP/1.1\r\nHost: menos\r\n\r\n"
    count = 3 * serving.HEAD_MAX_BYTES // len(request)
    async with served(pool) as url:
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        writer.write(request * count + b"GET /hea")
        await writer.drain()
        await asyncio.sleep(0.5)  # the head of the last request ends in a read of its own
        writer.write(b"lth HTTP/1.1\r\nHost: menos\r\nConnection: close\r\n\r\n")
        answers = b""
        with contextlib.suppress(ConnectionError):
            answers = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert answers.count(b"HTTP/1.1 200 ") == count + 1, answers[-300:]


async def test_a_head_over_its_limit_is_refused_even_when_its_last_read_ends_it(
    pool: asyncpg.Pool[Any],
) -> None:
    """The head's bytes were counted after each read unless that read ended the head: two
    pieces of 60 KiB (a 120 KiB head, 30,000 headers) were served."""
    async with served(pool) as url:
        address = url.removeprefix("http://").split(":")
        for header in (b"X-Big: " + b"a" * 60_000 + b"\r\n", b"a:\r\n" * 15_000):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"GET /health HTTP/1.1\r\nHost: menos\r\n" + header)
            await writer.drain()
            await asyncio.sleep(0.3)  # read by the server: the next piece ends the head
            with contextlib.suppress(ConnectionError):
                writer.write(header + b"\r\n")
                await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"}"), timeout=10)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert b"the request head is over 65536 bytes" in answer
            assert await closed_by_server(reader)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_refused_pipelined_request_does_not_overtake_the_answer_before_it(
    pool: asyncpg.Pool[Any],
) -> None:
    """httptools parses a pipelined request before the one ahead of it is answered: its 400
    was written first and the connection closed, so the valid request's answer was lost and
    the client read the 400 as that request's."""
    async with served(pool) as url:
        answers = await sent_raw(
            url,
            b"GET /health HTTP/1.1\r\nHost: menos\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: menos\r\nX-Bad: a\x00b\r\n\r\n",
        )
    assert answers.startswith(b"HTTP/1.1 200 "), answers
    assert b"}HTTP/1.1 400 " in answers, answers  # after the 200's body
    assert b"Invalid header value char" in answers


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize(
    ("framing", "body", "reason"),
    [
        (
            b"Transfer-Encoding: chunked",
            b"zz\r\n{}\r\n0\r\n\r\n",
            b"Invalid character in chunk size",
        ),
        (b"Transfer-Encoding: identity", b"{}", b"Transfer-Encoding"),
    ],
)
async def test_a_request_whose_body_the_parser_refuses_is_answered_at_once(
    pool: asyncpg.Pool[Any],
    repo: repository.Repository,
    framing: bytes,
    body: bytes,
    reason: bytes,
    pipelined: bool,
) -> None:
    """A bad chunk size, or a framing other than chunked, fails the parser after the head,
    while the app already waits for the body (or will, once the request pipelined before it
    is answered): the refusal waited for its answer, which came only as a 408 once
    BODY_DEADLINE_S (60 s) had passed."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url:
        before = b"GET /health HTTP/1.1\r\nHost: menos\r\n\r\n" if pipelined else b""
        answer = await sent_raw(
            url,
            before + b"POST /api/v1/content HTTP/1.1\r\nHost: menos\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: application/json\r\n" + framing + b"\r\n\r\n" + body,
            timeout=5,
        )
    if pipelined:
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        answer = answer[answer.index(b"}HTTP/1.1 ") + 1 :]
    head, _, problem = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower(), answer
    assert b"not a valid HTTP/1.1 request" in problem and reason in problem, problem
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM menos.content") == 0


async def test_a_cancel_whose_body_the_parser_refuses_cancels_nothing(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """A refused request leaves nothing behind, even on a route that never reads its body."""
    key = (await repo.create_key("alice", "user")).api_key
    async with served(pool) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            job_id = (await c.post("/api/v1/content", json={"text": "# a"})).json()["job_id"]
        answer = await sent_raw(
            url,
            b"POST /api/v1/jobs/" + job_id.encode() + b"/cancel HTTP/1.1\r\nHost: menos\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            timeout=5,
        )
        await asyncio.sleep(0.2)  # a cancel still running would be done by now
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Invalid character in chunk size" in answer, answer
    async with pool.acquire() as conn:
        status = await conn.fetchval(
            "SELECT status FROM menos.pipeline_job WHERE job_id = $1", uuid.UUID(job_id)
        )
    assert status == "pending", status


async def test_a_request_the_parser_refuses_writes_no_warning(
    pool: asyncpg.Pool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each request the parser refused also wrote uvicorn's warning "Invalid HTTP request
    received.": any client could write warning lines at will. The refusal's own
    `request_refused` line (info) is the one kept."""
    caplog.set_level(logging.DEBUG, logger="uvicorn.error")
    async with served(pool) as url:
        refused = await sent_raw(
            url, b"GET /health HTTP/1.1\r\nHost: menos\r\nX-Bad: a\x01b\r\n\r\n"
        )
    assert refused.startswith(b"HTTP/1.1 400 "), refused
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [], warned


async def test_a_request_target_uvicorn_cannot_read_is_named(pool: asyncpg.Pool[Any]) -> None:
    """`CONNECT host:port` failed in uvicorn's own callback: the detail said only "User
    callback error"; it gives the callback's error."""
    async with served(pool) as url:
        answer = await sent_raw(url, b"CONNECT menos:443 HTTP/1.1\r\nHost: menos\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"not a valid HTTP/1.1 request: invalid url" in answer, answer


async def test_the_tag_filter_finds_result_tags_as_they_are_written(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """Result tags are kept lower-case with `-` for spaces: `?tag=Machine Learning` found
    nothing tagged `machine-learning` by the analysis, though a submitter's `Music` is found
    as written."""
    key = (await repo.create_key("alice", "user")).api_key
    async with (
        served(pool) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        analyzed = (await client.post("/api/v1/content", json={"text": "# a"})).json()
        await client.post("/api/v1/content", json={"text": "# b", "tags": ["Music"]})
        await pool.execute(
            'UPDATE menos.content SET result = \'{"tags": ["machine-learning"]}\''
            " WHERE content_id = $1",
            uuid.UUID(analyzed["content_id"]),
        )
        by_result = await client.get("/api/v1/content", params={"tag": "Machine Learning"})
        by_submitter = await client.get("/api/v1/content", params={"tag": "Music"})
        by_other_case = await client.get("/api/v1/content", params={"tag": "music"})
    assert [i["content_id"] for i in by_result.json()["items"]] == [analyzed["content_id"]]
    assert [i["tags"] for i in by_submitter.json()["items"]] == [["Music"]]
    assert by_other_case.json()["items"] == []  # a submitter's tag is matched as written

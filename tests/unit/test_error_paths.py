"""Error paths that answer for one cause only: anything else keeps its usual answer."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import asyncpg
import pytest
import structlog
from litestar import get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import InternalServerException
from litestar.params import Body
from litestar.testing import create_test_client

from menos import cli, db, errors
from menos.http import errors as http_errors


@get("/boom", sync_to_thread=False)
def boom_get() -> None:
    raise RecursionError("a bug")


@post("/boom", sync_to_thread=False)
def boom_post() -> None:
    raise RecursionError("maximum recursion depth exceeded")


def test_a_recursion_error_without_a_body_is_a_500_not_a_400() -> None:
    """Only a body can be nested too deeply; without one, the RecursionError is a bug."""
    with create_test_client(
        [boom_get, boom_post], exception_handlers=http_errors.HANDLERS
    ) as client:
        assert client.get("/boom").status_code == 500
        nested = client.post("/boom", json={"a": 1})
    assert nested.status_code == 400
    assert nested.json()["errors"] == [{"field": "body", "message": http_errors.NESTED_TOO_DEEPLY}]
    assert nested.json()["detail"] == f"body: {http_errors.NESTED_TOO_DEEPLY}"


@post("/form", sync_to_thread=False)
def form(data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)]) -> None:
    pass


def test_a_400_of_litestar_s_own_names_the_body_in_its_detail() -> None:
    """Every 400's detail is `field: message`; a malformed multipart body's said only
    `Invalid multipart/form-data`, and one nested too deeply only its message."""
    with create_test_client([form], exception_handlers=http_errors.HANDLERS) as client:
        broken = client.post(
            "/form",
            content=b"garbage",
            headers={"content-type": "multipart/form-data; boundary=XX"},
        )
    assert broken.status_code == 400
    (error,) = broken.json()["errors"]
    assert error["field"] == "body"
    assert broken.json()["detail"] == f"body: {error['message']}"


@get("/failing", sync_to_thread=False)
def failing() -> None:
    raise InternalServerException()


def test_a_500_of_litestar_s_own_is_logged() -> None:
    """Litestar's own 500s (its static files' lookups failing) were answered and not logged:
    an operator never saw them."""
    with (
        structlog.testing.capture_logs() as logs,
        create_test_client([failing], exception_handlers=http_errors.HANDLERS) as client,
    ):
        assert client.get("/failing").status_code == 500
    assert [(e["event"], e["path"]) for e in logs] == [("request_unhandled_error", "/failing")]


def test_an_os_error_without_a_message_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """asyncpg's query timeout is a TimeoutError (an OSError) with no message."""

    def times_out(*_: object) -> int:
        raise TimeoutError()

    monkeypatch.setitem(cli.COMMANDS, "jobs", times_out)
    # Logging stays as the test session set it: configured here, it would write to this
    # test's captured stderr, closed once the test ends.
    monkeypatch.setattr(cli.menos_logging, "configure", lambda *_: None)
    assert cli.main(["jobs", "list"]) == 1
    assert capsys.readouterr().err.strip() == "menos: TimeoutError"


def test_a_role_without_grants_gets_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role without USAGE on the menos schema, or SELECT on its tables, got asyncpg's
    traceback from every command (its first read is the migrations check)."""

    def denied(*_: object) -> int:
        raise asyncpg.InsufficientPrivilegeError("permission denied for schema menos")

    monkeypatch.setitem(cli.COMMANDS, "jobs", denied)
    monkeypatch.setattr(cli.menos_logging, "configure", lambda *_: None)
    assert cli.main(["jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("menos: this database role may not use menos's tables: permission")


async def test_a_database_that_does_not_answer_is_named_in_the_error() -> None:
    """A server that accepts the connection but never answers (a hung host, a dropped route)
    gives `menos: the database did not answer within 0.2 s`, not a bare `menos: `."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answered

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dsn = f"postgresql://menos:secret@127.0.0.1:{port}/menos"
    try:
        with pytest.raises(errors.DatabaseUnavailable) as connecting:
            await db.connect(dsn, timeout=0.2)
        with pytest.raises(errors.DatabaseUnavailable) as pooling:
            await db.create_pool(dsn, timeout=0.2)
        for caught in (connecting, pooling):
            assert str(caught.value) == "the database did not answer within 0.2 s"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()

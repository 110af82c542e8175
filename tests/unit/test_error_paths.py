"""Error paths that answer for one cause only: anything else keeps its usual answer."""

from __future__ import annotations

import pytest
from litestar import get, post
from litestar.testing import create_test_client

from menos import cli
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

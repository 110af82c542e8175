"""Usage errors of the command line: exit 2, with the usage of the command that was given."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from menos import cli, settings


@pytest.mark.parametrize(
    ("argv", "usage", "complaint"),
    [
        (["purge", "--bogus"], "menos purge", "unrecognized arguments: --bogus"),
        (["--bogus", "jobs", "list"], "menos", "unrecognized arguments: --bogus"),
        (["jobs", "list", "--bogus", "x"], "menos jobs list", "unrecognized arguments: --bogus x"),
        (["db", "stop", "now"], "menos db stop", "unrecognized arguments: now"),
        (["db", "--force", "stop"], "menos db", "unrecognized arguments: --force"),
        (["jobs", "--bogus", "list", "--limit", "2"], "menos jobs", "arguments: --bogus"),
        (["keys", "list", "--bogus"], "menos keys list", "unrecognized arguments: --bogus"),
        (["worker", "--conc", "2"], "menos worker", "unrecognized arguments: --conc"),
        (["reprocess", "https://x.example/", "--forc"], "menos reprocess", "arguments: --forc"),
        (["worker", "--concurrency", "0"], "menos worker", "--concurrency: must be from 1 to"),
        (["classify", "--limit", "-1"], "menos classify", "--limit: must be 1 or more, not -1"),
        (["classify", "--limit", "many"], "menos classify", "--limit: not a whole number"),
        (["jobs", "list", "--limit", "0"], "menos jobs list", "--limit: must be from 1 to 1000"),
        (["keys", "list", "--owner", "\udcff"], "menos keys list", "owner: not valid UTF-8"),
        (["worker", "--worker-id", " "], "menos worker", "--worker-id: must not be blank"),
        (["worker", "--worker-id", "w\n1"], "menos worker", "--worker-id: must not hold control"),
        (["worker", "--worker-id", "w\t1"], "menos worker", "--worker-id: must not hold control"),
        (["keys", "create", "--owner", "a b"], "menos keys create", "--owner: use 1-64 characters"),
        (["keys", "list", "--owner", ""], "menos keys list", "--owner: use 1-64 characters"),
        (["keys", "rotate-secret", "--owner", "a/b"], "menos keys rotate-secret", "--owner: use"),
        (["jobs", "list", "--owner", "al ice"], "menos jobs list", "--owner: use 1-64 characters"),
        (["classify", "--owner", "alice!"], "menos classify", "--owner: use 1-64 characters"),
        (["export-summaries", "--owner", ""], "menos export-summaries", "--owner: use 1-64"),
        (["reprocess", "https://x.example/", "--owner", "é"], "menos reprocess", "--owner: use"),
        (["export-summaries", "--out", ""], "menos export-summaries", "--out: an empty path"),
        (["reprocess", "01a21bef-da0d"], "menos reprocess", "neither a content id nor a URL"),
        (["reprocess", "not-a-thing"], "menos reprocess", "neither a content id nor a URL"),
        (["reprocess", "ftp://x"], "menos reprocess", "only http and https URLs are accepted"),
        (["reprocess", "https://xn--/"], "menos reprocess", "CONTENT_ID|URL: "),
        (["reprocess", "http://x/\udcff"], "menos reprocess", "CONTENT_ID|URL: not valid UTF-8"),
        (
            [
                "reprocess",
                "01a21ce0-c9b7-70bc-8312-8ccb7d8ead6d",
                "--callback-url",
                "http://x/\udcff",
            ],
            "menos reprocess",
            "--callback-url: not valid UTF-8",
        ),
    ],
)
def test_a_usage_error_names_the_command_it_belongs_to(
    argv: list[str], usage: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main(argv)
    assert ended.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} "), err
    assert f"{usage}: error: " in err and complaint in err, err


def test_an_api_host_it_cannot_listen_on_names_menos_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MENOS_HOST that is no address of this machine (here TEST-NET-1, which needs no DNS)
    stopped `bin/api` with the system's words only; an invalid setting names its variable."""
    assert not cli._can_listen(settings.Settings(host="192.0.2.1", port=18799))
    err = capsys.readouterr().err
    assert "menos: cannot listen on 192.0.2.1 port 18799 (" in err
    assert "set MENOS_HOST to an address of this machine" in err


def test_a_malformed_key_id_is_refused_before_any_database_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys revoke` with a malformed id is a usage error (exit 2, its usage shown) and leaves
    no database behind: run from the wrong directory, it made and migrated a whole cluster
    there before saying the id was malformed."""
    home = tmp_path / "home"
    monkeypatch.setenv("MENOS_HOME", str(home))
    monkeypatch.delenv("MENOS_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as ended:
        cli.main(["keys", "revoke", "not-a-key-id"])
    assert ended.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: menos keys revoke "), err
    assert "key_id: " in err and "not-a-key-id" in err, err
    assert not home.exists()


def test_a_database_that_cannot_be_reached_is_named_as_such(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MENOS_DATABASE_URL at a port nothing listens on: exit 1 with a message that says it
    is the database that could not be reached, not only the socket error's words."""
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MENOS_DATABASE_URL", f"postgresql://menos:x@127.0.0.1:{port}/menos")
    assert cli.main(["jobs", "list"]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("menos: cannot connect to the database: "), err


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "list"],
        ["keys", "revoke", "01a21ce0-c9b7-70bc-8312-8ccb7d8ead6d"],
        ["keys", "rotate-secret", "--owner", "alice"],
    ],
)
def test_keys_other_than_create_leave_no_database_where_there_was_none(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Listing, revoking or rotating from the wrong directory says no database is there, as
    `jobs list` does, instead of creating and migrating an empty cluster that has nothing."""
    home = tmp_path / "home"
    monkeypatch.setenv("MENOS_HOME", str(home))
    monkeypatch.delenv("MENOS_DATABASE_URL", raising=False)
    assert cli.main(argv) == cli.EXIT_FAILURE
    assert f"menos: no embedded database under {home}" in capsys.readouterr().err
    assert not (home / "pgdata").exists()

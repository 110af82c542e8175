"""Settings from the environment: a value menos cannot use stops it at start, naming the
variable, instead of failing later in a claim, a rescue or a pool."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from menos import cli, errors, settings


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MENOS_WORKER_CONCURRENCY", "1001"),
        ("MENOS_WORKER_CONCURRENCY", "3000000000"),
        ("MENOS_MAX_CONCURRENCY", "2147483648"),
        ("MENOS_JOB_MAX_ATTEMPTS", "99999999999999999999"),
        ("MENOS_JOB_LEASE_S", "1e300"),
        ("MENOS_CALLBACK_BACKOFF_S", "31536001"),
        ("MENOS_JOB_LEASE_S", "nan"),
        ("MENOS_JOB_LEASE_S", "1_0"),
        ("MENOS_WORKER_POLL_S", "2e0"),
        ("MENOS_CALLBACK_TIMEOUT_S", "0x10"),
        ("MENOS_MAX_CONCURRENCY", "1_000"),
        ("MENOS_MAX_BODY_BYTES", "5_242_880"),
        ("MENOS_DATABASE_URL", "notaurl"),
        ("MENOS_DATABASE_URL", "mysql://a@b/c"),
        ("MENOS_DATABASE_URL", "host=db dbname=menos"),
        ("MENOS_DATABASE_URL", "postgresql://[::1/db"),
        ("MENOS_DATABASE_URL", "postgresql://u@db:abc/menos"),
        ("MENOS_DATABASE_URL", "postgresql://u@db:99999/menos"),
        ("MENOS_DATABASE_URL", "postgresql://u@h1:5432,h2:0/menos"),
        ("MENOS_DATABASE_URL", "postgresql://u@[::1]:x/menos"),
        ("MENOS_DATABASE_URL", "postgresql:///menos?host=db:abc"),
        ("MENOS_DATABASE_URL", "postgresql://u@db/menos?port=70000"),
        ("MENOS_DATABASE_URL", "postgresql://u@db/menos?sslmode=bogus"),
        ("MENOS_DATABASE_URL", "postgresql:///menos?host=h1,h2&port=5432,x"),
        ("MENOS_LLM_BASE_URL", "http://[::1"),
        ("MENOS_LLM_BASE_URL", "http://llm:99999/v1"),
        ("MENOS_LLM_BASE_URL", "http://"),
        ("MENOS_LLM_BASE_URL", " http://llm:8080/v1"),
        ("MENOS_LLM_BASE_URL", "http://llm:8080/v1\n"),
        ("MENOS_LLM_BASE_URL", "http://llm:0/v1"),
        ("MENOS_YOUTUBE_OEMBED_URL", "ftp://example.com/oembed"),
    ],
)
def test_values_menos_cannot_use_name_their_variable(variable: str, raw: str) -> None:
    """Each is refused when settings are read, and the message starts with the variable."""
    with pytest.raises(errors.SettingsError) as caught:
        settings.from_env({variable: raw})
    assert str(caught.value).startswith(variable)


@pytest.mark.parametrize("raw", ["sk-proj-ünïcode-SECRET", "sk-a\rSECRET", "sk-a SECRET"])
def test_an_llm_api_key_that_cannot_be_a_header_is_refused_without_showing_it(raw: str) -> None:
    """A key httpx cannot send failed every job with PIPELINE_EXCEPTION, or came back unmasked
    in the job's error; it is refused at start, and the message does not repeat it."""
    with pytest.raises(errors.SettingsError) as caught:
        settings.from_env({"MENOS_LLM_API_KEY": raw})
    assert str(caught.value).startswith("MENOS_LLM_API_KEY")
    assert "SECRET" not in str(caught.value)


def test_the_largest_usable_values_are_taken() -> None:
    """The bounds themselves pass, as do a huge retention and any URL asyncpg takes."""
    conf = settings.from_env(
        {
            "MENOS_WORKER_CONCURRENCY": "1000",
            "MENOS_MAX_CONCURRENCY": "2147483647",
            "MENOS_JOB_MAX_ATTEMPTS": "2147483647",
            "MENOS_JOB_LEASE_S": "31536000",
            "MENOS_RETENTION_COMPACT_DAYS": "99999999999999999999",  # "forever": clamped later
            "MENOS_DATABASE_URL": "postgres://menos:s3cret@db.internal:5432/menos",
        }
    )
    assert (conf.worker_concurrency, conf.max_concurrency) == (1000, 2**31 - 1)
    assert conf.job_lease_s == 31536000
    assert conf.database_url == "postgres://menos:s3cret@db.internal:5432/menos"
    for dsn in (
        "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql:///menos?host=/var/run/postgresql",
        "postgresql://u:p%40ss@[::1]:5432/db",
        "postgresql:///menos?host=h1:5432,[::1]&port=5433",
    ):
        assert settings.from_env({"MENOS_DATABASE_URL": dsn}).database_url == dsn
    conf = settings.from_env({"MENOS_LLM_BASE_URL": "HTTP://[::1]:8080/v1/"})
    assert conf.llm_base_url == "HTTP://[::1]:8080/v1"


def test_several_hosts_after_an_ipv6_one_are_taken_where_python_takes_them() -> None:
    """asyncpg reads a URL with urllib: a Python with the stricter bracketed-host check (the
    fix of CVE-2024-11168, which Debian 12's 3.11.2 carries) refuses `[::1],db:5433` as a
    host part, an older one takes it. The setting follows the Python it runs on: it never
    refuses a URL asyncpg would take, nor takes one asyncpg would refuse."""
    dsn = "postgresql://u@[::1],db:5433,other/db"
    try:
        urllib.parse.urlsplit(dsn)
    except ValueError:
        with pytest.raises(errors.SettingsError, match="Invalid IPv6 URL"):
            settings.from_env({"MENOS_DATABASE_URL": dsn})
    else:
        assert settings.from_env({"MENOS_DATABASE_URL": dsn}).database_url == dsn


def test_a_dotenv_file_reads_as_shells_and_compose_read_it(tmp_path: Path) -> None:
    """Comments after a value, quotes keeping a `#`, `export`, blank values, other tools'
    variables: the values a user means."""
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# menos\n"
        "export MENOS_HOME='/srv/menos' # where it lives\n"
        'MENOS_LLM_MODEL="qwen # 7b"\n'
        "MENOS_LOG_FORMAT=json   # for the collector\n"
        "MENOS_LLM_API_KEY=\n"
        "OTHER_TOOL = x\n",
        encoding="utf-8",
    )
    assert settings.read_dotenv(dotenv) == {
        "MENOS_HOME": "/srv/menos",
        "MENOS_LLM_MODEL": "qwen # 7b",
        "MENOS_LOG_FORMAT": "json",
        "MENOS_LLM_API_KEY": "",
        "OTHER_TOOL": "x",
    }


@pytest.mark.parametrize(
    "line",
    ["garbage line", "=value", "MENOS_HOME='unclosed", "MENOS_PORT:8300", "MENOS_PORT", "A-B=1"],
)
def test_a_dotenv_line_that_is_not_key_value_is_named(tmp_path: Path, line: str) -> None:
    """Ignored, a mistyped line would leave its setting at the default without a word."""
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"MENOS_PORT=8001\n{line}\n", encoding="utf-8")
    with pytest.raises(errors.SettingsError) as refused:
        settings.read_dotenv(dotenv)
    assert str(refused.value) == f"{dotenv} line 2: expected KEY=VALUE"


@pytest.mark.parametrize("raw", ["0", "-1", "70000"])
def test_a_port_out_of_range_names_the_range(raw: str) -> None:
    """MENOS_PORT is 1-65535 (docs/operations.md): every out-of-range value says so, the
    same way, whether it is too small or too large."""
    with pytest.raises(errors.SettingsError) as caught:
        settings.from_env({"MENOS_PORT": raw})
    assert str(caught.value) == f"MENOS_PORT: expected a TCP port (1-65535), got {raw!r}"


def test_a_pg_bindir_without_postgres_is_an_invalid_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped MENOS_PG_BINDIR stops every command at start with exit 2, naming it, as any
    other invalid variable does; a directory holding postgres and initdb is taken."""
    with pytest.raises(errors.SettingsError) as caught:
        settings.from_env({"MENOS_PG_BINDIR": str(tmp_path / "missing")})
    assert str(caught.value).startswith("MENOS_PG_BINDIR")
    (tmp_path / "postgres").touch()
    (tmp_path / "initdb").touch()
    assert settings.from_env({"MENOS_PG_BINDIR": str(tmp_path)}).pg_bindir == tmp_path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MENOS_PG_BINDIR", str(tmp_path / "missing"))
    assert cli.main(["jobs", "list"]) == cli.EXIT_USAGE
    assert "menos: invalid configuration: MENOS_PG_BINDIR: " in capsys.readouterr().err


def test_a_pg_bindir_without_initdb_is_an_invalid_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A MENOS_PG_BINDIR holding postgres but no initdb (a runtime-only package) stops every
    command at start with exit 2, naming it, rather than the first start of a new MENOS_HOME
    failing with exit 1 on a missing file."""
    (tmp_path / "postgres").touch()
    with pytest.raises(errors.SettingsError) as caught:
        settings.from_env({"MENOS_PG_BINDIR": str(tmp_path)})
    assert str(caught.value).startswith("MENOS_PG_BINDIR: ")
    assert "initdb" in str(caught.value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MENOS_PG_BINDIR", str(tmp_path))
    assert cli.main(["db", "start"]) == cli.EXIT_USAGE
    assert "menos: invalid configuration: MENOS_PG_BINDIR: " in capsys.readouterr().err
    assert not (tmp_path / ".menos").exists()


@pytest.mark.parametrize("inside", [False, True])
def test_a_home_that_is_a_file_is_an_invalid_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    inside: bool,
) -> None:
    """MENOS_HOME naming a file (or a path under one) stops every command at start with exit
    2, naming the variable, rather than failing with exit 1 and only "File exists"."""
    (tmp_path / "notes.txt").write_text("not a directory\n")
    home = tmp_path / "notes.txt" / "menos" if inside else tmp_path / "notes.txt"
    with pytest.raises(errors.SettingsError) as caught:
        settings.from_env({"MENOS_HOME": str(home)})
    assert str(caught.value).startswith("MENOS_HOME: expected a directory")
    assert settings.from_env({"MENOS_HOME": str(tmp_path / "new" / "home")}).home == (
        tmp_path / "new" / "home"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MENOS_HOME", str(home))
    assert cli.main(["db", "start"]) == cli.EXIT_USAGE
    assert "menos: invalid configuration: MENOS_HOME: " in capsys.readouterr().err

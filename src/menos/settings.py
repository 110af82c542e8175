"""Typed settings parsed once from the environment (and an optional `.env` file)."""

from __future__ import annotations

import io
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import msgspec
from dotenv import parser as dotenv_parser

from menos import errors

T = TypeVar("T")

Analyzer = Literal["builtin", "openai"]
DataTier = Literal["compact", "full"]
LogFormat = Literal["console", "json"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of menos; built by `from_env`, passed down explicitly."""

    database_url: str | None = None
    home: Path = Path(".menos")
    pg_bindir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrency: int = 4
    worker_concurrency: int = 4
    job_lease_s: float = 60.0
    job_max_attempts: int = 3
    analyzer: Analyzer = "builtin"
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "llama3.1"
    llm_api_key: str | None = None
    llm_timeout_s: float = 120.0
    llm_json_mode: bool = True
    pipeline_max_chars: int = 10000
    callback_timeout_s: float = 10.0
    callback_backoff_s: float = 2.0
    callback_allow_private: bool = False
    data_tier: DataTier = "compact"
    retention_compact_days: int = 180
    retention_full_days: int = 60
    log_format: LogFormat = "json"
    youtube_languages: tuple[str, ...] = ("en",)
    youtube_oembed_url: str = "https://www.youtube.com/oembed"
    worker_poll_s: float = 2.0
    worker_shutdown_grace_s: float = 30.0
    max_body_bytes: int = 5 * 1024 * 1024


# Upper bounds that keep a value usable where it goes: an integer PostgreSQL compares (claims,
# attempts), a connection pool sized from the slots (one holder per slot is made up front),
# an interval PostgreSQL can add to a timestamp (backoffs grow 16-fold).
PG_INTEGER_MAX = 2**31 - 1
MAX_WORKER_SLOTS = 1000
MAX_SECONDS = 365 * 24 * 3600


# Decimal numbers as people write them: Python's float() and int() also take `1_0` (ten) and
# `1e3`, which a setting documented as a decimal number or an integer should refuse.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_INTEGER = re.compile(r"[+-]?\d+")


def _seconds(name: str, raw: str) -> float:
    try:
        if not _DECIMAL.fullmatch(raw.strip()):
            raise ValueError(raw)
        value = float(raw)
    except ValueError:
        raise errors.SettingsError(name, f"expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= MAX_SECONDS:
        raise errors.SettingsError(
            name, f"expected a positive number of seconds up to {MAX_SECONDS}, got {raw!r}"
        )
    return value


def _positive_int(name: str, raw: str, maximum: int | None = None) -> int:
    try:
        if not _INTEGER.fullmatch(raw.strip()):
            raise ValueError(raw)
        value = int(raw.strip())
    except ValueError:
        raise errors.SettingsError(name, f"expected a positive integer, got {raw!r}") from None
    if value <= 0:
        raise errors.SettingsError(name, f"expected a positive integer, got {raw!r}")
    if maximum is not None and value > maximum:
        raise errors.SettingsError(
            name, f"expected a positive integer up to {maximum}, got {raw!r}"
        )
    return value


def _up_to(maximum: int) -> Callable[[str, str], int]:
    return lambda name, raw: _positive_int(name, raw, maximum)


def _dsn(name: str, raw: str) -> str:
    """A PostgreSQL URL as asyncpg takes it (keyword/value strings are not accepted), each of
    its `host:port`s (there may be several, also in the `host` and `port` query options) with a
    port from 1 to 65535, and an `sslmode` libpq knows. Other options are left to asyncpg."""
    dsn = _text(name, raw)
    expected = "expected a postgresql://user:password@host:port/database URL"
    try:
        parts = urllib.parse.urlsplit(dsn)
        options = urllib.parse.parse_qs(parts.query)
    except ValueError as exc:  # an unclosed [IPv6] bracket, say
        raise errors.SettingsError(name, f"{expected} ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise errors.SettingsError(name, expected)
    hosts = [parts.netloc.rpartition("@")[2], *options.get("host", [])]
    ports = [
        # `host`, `host:port`, `[v6]` or `[v6]:port`, each as asyncpg splits them.
        (host.rpartition("]")[2] if host.startswith("[") else host).partition(":")[2]
        for listed in hosts
        for host in listed.split(",")
    ]
    ports += [port for listed in options.get("port", []) for port in listed.split(",")]
    for digits in ports:
        if digits and not (digits.isascii() and digits.isdigit() and 0 < int(digits) <= 65535):
            raise errors.SettingsError(name, f"{expected}: {digits!r} is not a TCP port")
    for mode in options.get("sslmode", []):
        if mode not in _SSLMODES:
            raise errors.SettingsError(
                name, f"sslmode must be one of {', '.join(_SSLMODES)}, not {mode!r}"
            )
    return dsn


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _port(name: str, raw: str) -> int:
    try:
        if not _INTEGER.fullmatch(raw.strip()):
            raise ValueError(raw)
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 0 < value <= 65535:
        raise errors.SettingsError(name, f"expected a TCP port (1-65535), got {raw!r}")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise errors.SettingsError(name, f"expected true or false, got {raw!r}")


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in allowed:
            raise errors.SettingsError(name, f"expected one of {', '.join(allowed)}, got {raw!r}")
        return raw

    return parse


def _url(name: str, raw: str) -> str:
    # urlsplit drops what a URL may not hold (spaces, control characters) instead of refusing.
    usable = raw.isprintable() and " " not in raw
    try:
        parts = urllib.parse.urlsplit(raw)
        usable = usable and parts.port != 0  # .port raises for one that is no number or too big
    except ValueError:
        usable = False
    if not usable or parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.SettingsError(name, f"expected an http(s) URL, got {raw!r}")
    return raw.rstrip("/") if name == "MENOS_LLM_BASE_URL" else raw


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise errors.SettingsError(name, "must not be blank")
    return raw.strip()


def _api_key(name: str, raw: str) -> str:
    # Sent in an HTTP header: httpx cannot encode other characters (every job would fail
    # unexpectedly), and a control character came back in its error, unmasked. The message
    # does not repeat the value: it is a secret.
    key = _text(name, raw)
    if not all("!" <= char <= "~" for char in key):
        raise errors.SettingsError(
            name, "expected visible ASCII characters only (no spaces or control characters)"
        )
    return key


def _home(name: str, raw: str) -> Path:
    # A file there made every command that needs the database fail with exit 1 and only
    # the OS's words ("File exists", "Not a directory"), naming neither the variable nor why.
    path = Path(_text(name, raw))
    for part in (path, *path.parents):  # the nearest that exists
        try:
            if part.is_dir():
                break
            is_file = part.exists()
        except OSError:  # not ours to look into (permissions): the command will say
            break
        if is_file:
            raise errors.SettingsError(name, f"expected a directory, got {raw!r}")
    return path


def _pg_bindir(name: str, raw: str) -> Path:
    # initdb too: without it the first start of a new MENOS_HOME failed later, with exit 1
    # and a message naming a file rather than the variable.
    path = Path(_text(name, raw))
    for binary in ("postgres", "initdb"):
        if not (path / binary).is_file():
            raise errors.SettingsError(
                name, f"expected a directory holding postgres and initdb, got {raw!r}"
            )
    return path


def _languages(name: str, raw: str) -> tuple[str, ...]:
    langs = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not langs:
        raise errors.SettingsError(name, "expected comma-separated language codes")
    return langs


# variable → (field, parser)
_FIELDS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "MENOS_DATABASE_URL": ("database_url", _dsn),
    "MENOS_HOME": ("home", _home),
    "MENOS_PG_BINDIR": ("pg_bindir", _pg_bindir),
    "MENOS_HOST": ("host", _text),
    "MENOS_PORT": ("port", _port),
    "MENOS_MAX_CONCURRENCY": ("max_concurrency", _up_to(PG_INTEGER_MAX)),
    "MENOS_WORKER_CONCURRENCY": ("worker_concurrency", _up_to(MAX_WORKER_SLOTS)),
    "MENOS_JOB_LEASE_S": ("job_lease_s", _seconds),
    "MENOS_JOB_MAX_ATTEMPTS": ("job_max_attempts", _up_to(PG_INTEGER_MAX)),
    "MENOS_ANALYZER": ("analyzer", _choice("builtin", "openai")),
    "MENOS_LLM_BASE_URL": ("llm_base_url", _url),
    "MENOS_LLM_MODEL": ("llm_model", _text),
    "MENOS_LLM_API_KEY": ("llm_api_key", _api_key),
    "MENOS_LLM_TIMEOUT_S": ("llm_timeout_s", _seconds),
    "MENOS_LLM_JSON_MODE": ("llm_json_mode", _bool),
    "MENOS_PIPELINE_MAX_CHARS": ("pipeline_max_chars", _positive_int),
    "MENOS_CALLBACK_TIMEOUT_S": ("callback_timeout_s", _seconds),
    "MENOS_CALLBACK_BACKOFF_S": ("callback_backoff_s", _seconds),
    "MENOS_CALLBACK_ALLOW_PRIVATE": ("callback_allow_private", _bool),
    "MENOS_DATA_TIER": ("data_tier", _choice("compact", "full")),
    "MENOS_RETENTION_COMPACT_DAYS": ("retention_compact_days", _positive_int),
    "MENOS_RETENTION_FULL_DAYS": ("retention_full_days", _positive_int),
    "MENOS_LOG_FORMAT": ("log_format", _choice("console", "json")),
    "MENOS_YOUTUBE_LANGUAGES": ("youtube_languages", _languages),
    "MENOS_YOUTUBE_OEMBED_URL": ("youtube_oembed_url", _url),
    "MENOS_WORKER_POLL_S": ("worker_poll_s", _seconds),
    "MENOS_WORKER_SHUTDOWN_GRACE_S": ("worker_shutdown_grace_s", _seconds),
    "MENOS_MAX_BODY_BYTES": ("max_body_bytes", _positive_int),
}


_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file of KEY=VALUE lines as python-dotenv (and so Docker Compose and
    most tools) reads them: comments, quotes, `export`. A line that is none of these is
    refused, naming it: skipped, its setting would keep its default without a word."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise errors.SettingsError(str(path), "not UTF-8 text") from None
    for binding in dotenv_parser.parse_stream(io.StringIO(text)):
        if binding.key is None and not binding.error:
            continue  # a comment or a blank line
        # python-dotenv also takes a bare word (`MENOS_PORT`, `MENOS_PORT:8300`) for a key
        # without a value: here that is a mistyped line too.
        key, value = binding.key, binding.value
        if binding.error or key is None or value is None or not _VARIABLE.match(key):
            line = binding.original.line
            raise errors.SettingsError(f"{path} line {line}", "expected KEY=VALUE")
        values[key] = value
    return values


def from_env(environ: Mapping[str, str] | None = None, *, dotenv: Path | None = None) -> Settings:
    """Build settings from the environment; an invalid value raises SettingsError naming it.

    Real environment variables win over the `.env` file.
    """
    env: dict[str, str] = read_dotenv(dotenv or Path(".env"))
    env.update(os.environ if environ is None else environ)
    values: dict[str, object] = {
        "log_format": "console" if sys.stderr.isatty() else "json",
    }
    for variable, (field, parse) in _FIELDS.items():
        raw = env.get(variable)
        if raw is None or (raw == "" and variable != "MENOS_CALLBACK_ALLOW_PRIVATE"):
            continue
        values[field] = parse(variable, raw)
    return Settings(**values)  # type: ignore[arg-type]


def with_overrides(settings: Settings, **changes: T) -> Settings:
    """A copy of `settings` with some fields replaced (used by command-line flags)."""
    return msgspec.structs.replace(settings, **changes)

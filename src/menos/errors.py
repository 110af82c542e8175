"""The MenosError tree: every error menos raises on purpose.

MenosError
├── SettingsError        invalid environment variable (names it)
├── DatabaseUnavailable  PostgreSQL cannot be reached
├── SchemaOutdated       migrations not applied
├── EmbeddedError        the embedded PostgreSQL could not start or stop
├── InvalidInput         a request field is invalid (names it)
│   └── Unresolvable     its URL's host resolves to no address
├── NotFound             unknown or not visible to the caller
├── Conflict             the state forbids the action (names the current status)
├── Unauthorized         missing, unknown or revoked API key
└── PipelineError        a job failed; carries the error code of the taxonomy
"""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "SOURCE_NOT_FOUND",
    "FETCH_FAILED",
    "CONTENT_EMPTY",
    "LLM_TIMEOUT",
    "LLM_CALL_ERROR",
    "EMPTY_RESPONSE",
    "PARSE_FAILED",
    "PERSIST_ERROR",
    "WORKER_LOST",
    "PIPELINE_EXCEPTION",
]

MAX_ERROR_MESSAGE = 500


def one_line(message: str) -> str:
    """A job's error message as it is stored and shown (`reprocess --wait` prints it on a
    terminal): one line of visible text. Control and format characters (the escape sequences
    of a server's answer, newlines) become spaces, and runs of spaces one."""
    return " ".join("".join(char if char.isprintable() else " " for char in message).split())


def describe(exc: BaseException) -> str:
    """`Type: message`; for an exception without a message, the message of the first exception
    in its chain that has one (httpx's async ReadError for a connection reset has none, its
    ConnectionResetError says what happened), else only `Type`."""
    message, seen = str(exc), {id(exc)}
    cause = _cause(exc)
    while not message and cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        message = str(cause)
        cause = _cause(cause)
    return f"{type(exc).__name__}: {message}".rstrip(": ")


def _cause(exc: BaseException) -> BaseException | None:
    """The exception a traceback shows before `exc`: none after `raise … from None`."""
    if exc.__cause__ is not None or exc.__suppress_context__:
        return exc.__cause__
    return exc.__context__


class MenosError(Exception):
    """Base of every error menos raises on purpose."""


class SettingsError(MenosError):
    """An environment variable has an invalid value."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class DatabaseUnavailable(MenosError):
    """PostgreSQL cannot be reached."""


class Refused(MenosError):
    """The database refused a write for what it holds (not for being unreachable)."""


class SchemaOutdated(MenosError):
    """The database schema lacks migrations this code needs."""


class SchemaMismatch(MenosError):
    """The database was migrated with a migration file this code has under another name or
    with other contents: its schema is not the one this code expects."""


class MigrationFailed(MenosError):
    """A migration's SQL failed: it was rolled back, and the ones after it were not applied."""


class EmbeddedError(MenosError):
    """The embedded PostgreSQL could not be started, found or stopped."""


class InvalidInput(MenosError):
    """A request field is invalid; `field` names it, and `also` holds the other invalid fields
    of the same request (a 400 lists each one)."""

    def __init__(self, field: str, message: str, also: tuple[InvalidInput, ...] = ()) -> None:
        super().__init__("; ".join([f"{field}: {message}", *(str(other) for other in also)]))
        self.field = field
        self.message = message
        self.also = also


class Unresolvable(InvalidInput):
    """A URL's host cannot be resolved (not an SSRF refusal: nothing said it was private)."""


class NotFound(MenosError):
    """The item does not exist or is not visible to the caller."""


class Conflict(MenosError):
    """The item's state forbids the action."""


class Unauthorized(MenosError):
    """Missing, unknown or revoked API key."""


class PipelineError(MenosError):
    """A pipeline stage failed with a code of the error taxonomy."""

    def __init__(
        self, code: ErrorCode, message: str, *, kept: dict[str, str] | None = None
    ) -> None:
        message = one_line(message[:MAX_ERROR_MESSAGE])
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        # What a failed analyzer call sent (`prompt`) and got back (`answer`), for the full tier.
        self.kept: dict[str, str] = dict(kept or {})

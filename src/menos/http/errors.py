"""The one table from errors to HTTP statuses, and RFC 9457 problem-details responses."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar import exceptions as lexc
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from menos import errors

log = structlog.get_logger("menos.http")

PROBLEM_JSON = "application/problem+json"
ABOUT_BLANK = "about:blank"
NESTED_TOO_DEEPLY = "the JSON body is nested too deeply"
NOT_UTF8 = "the JSON body is not valid UTF-8"
BODY_REQUIRED = "a JSON body is required"
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")
UNKNOWN_FIELD = "unknown field"
# The validator's words for a field's value, as the API says them: everything in a query
# string is a string (`?force=yes`: "Expected `bool`, got `str`").
_EXPECTED = re.compile(r"^Expected `(\w+)(?: \| null)?`, got `\w+`")
WHOLE_NUMBER = "must be a whole number"
_TYPE_WORDS = {
    "bool": "must be true or false",
    "int": WHOLE_NUMBER,
    "str": "must be a string",
    "array": "must be a list",
    "object": "must be an object",
}
DATA_TIERS = "must be compact or full"

STATUS: dict[type[errors.MenosError], tuple[int, str]] = {
    errors.InvalidInput: (400, "Invalid input"),
    errors.Unauthorized: (401, "Unauthorized"),
    errors.NotFound: (404, "Not found"),
    errors.Conflict: (409, "Conflict"),
    errors.DatabaseUnavailable: (503, "Database unavailable"),
    errors.SchemaOutdated: (503, "Database schema outdated"),
}


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field of a request."""

    field: str
    message: str


class Problem(msgspec.Struct, frozen=True):
    """An RFC 9457 problem-details body; every member is always sent, so none has a default
    (the schema then marks them all required)."""

    title: str
    status: int
    detail: str
    type: str  # always "about:blank": the status code is the problem type
    errors: list[FieldError]


class UnsupportedMedia(errors.MenosError):
    """The request's media type (or encoding) is not accepted; `field`: the part at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message if field is None else f"{field}: {message}")
        self.field = field
        self.message = message


class BodyTimeout(errors.MenosError):
    """The request body did not arrive in time."""


class ClientGone(errors.MenosError):
    """The client went away before its request body had arrived: nobody is left to answer."""


STATUS[UnsupportedMedia] = (415, "Unsupported media type")
STATUS[BodyTimeout] = (408, "Request timeout")
STATUS[ClientGone] = (499, "Client closed request")  # nginx's code; never received


def problem(
    status: int,
    title: str,
    detail: str,
    fields: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    """A problem-details response."""
    body = Problem(title=title, status=status, detail=detail, type=ABOUT_BLANK, errors=fields or [])
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _menos_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, errors.MenosError)
    for kind in type(exc).__mro__:
        if kind in STATUS:
            status, title = STATUS[kind]
            break
    else:
        status, title = 500, "Internal error"
    fields: list[FieldError] = []
    if isinstance(exc, errors.InvalidInput | UnsupportedMedia) and exc.field is not None:
        fields = [FieldError(field=exc.field, message=exc.message)]
        if isinstance(exc, errors.InvalidInput):
            fields += [FieldError(field=other.field, message=other.message) for other in exc.also]
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    if status == 408:
        headers = {"connection": "close"}  # the rest of the body may still be on its way
    detail = str(exc)
    if isinstance(exc, ClientGone):
        # An abandoned upload (a dropped connection, a Ctrl-C) is the client's doing, no bug.
        log.info("request_client_gone", path=request.url.path)
    if isinstance(exc, errors.DatabaseUnavailable):
        # The driver's message names the database's address: it goes to the log only.
        log.warning("request_database_unavailable", path=request.url.path, error=detail)
        detail = "the database is unavailable or too busy to answer in time; try again shortly"
        headers = {"retry-after": "1"}
    return problem(status, title, detail, fields, headers)


def unknown_field(message: str) -> str | None:
    """The field a decoding error says the body should not hold, if that is what it says."""
    found = _UNKNOWN.search(message)
    return found.group(1) if found else None


def plain(field: str, message: str) -> str:
    """The message for `field` in the API's words where the validator's are its own."""
    if expected := _EXPECTED.match(message):
        return _TYPE_WORDS.get(expected.group(1), message)
    if message.startswith("Invalid enum value") and field == "data_tier":
        return DATA_TIERS
    if message == "Invalid UUID":
        return "must be a UUID"
    if _MISSING.search(message):
        return "is required"
    return message


def _field_error(item: dict[str, Any]) -> FieldError:
    message = str(item.get("message", "invalid"))
    missing = _MISSING.search(message)
    key = str(item.get("key") or "")
    if unknown := unknown_field(message):
        return FieldError(field=unknown, message=UNKNOWN_FIELD)
    if missing:
        key = missing.group(1) if key in ("", "data") else f"{key}.{missing.group(1)}"
    elif key == "data" and message == "'data'":
        key, message = "body", BODY_REQUIRED
    field = "body" if key in ("", "data") else key
    return FieldError(field=field, message=plain(field.rsplit(".", 1)[-1], message))


def _litestar_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, lexc.ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        fields = [_field_error(item) for item in extra if isinstance(item, dict)]
        if len(fields) > 1:
            # Litestar also reports an absent body when another parameter failed, whether or
            # not the route needs one: name only what the client sent wrong
            fields = [f for f in fields if f.message != BODY_REQUIRED] or fields
        fields = fields or [FieldError(field="body", message=exc.detail)]
        # As menos's own 400s: the detail names the fields, not only the route.
        detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
        return problem(400, "Invalid input", detail, fields)
    if isinstance(exc, lexc.HTTPException):
        status = exc.status_code
        titles = {
            400: "Invalid input",
            404: "Not found",
            405: "Method not allowed",
            413: "Request body too large",
            415: "Unsupported media type",
        }
        if status >= 500:  # Litestar's own failure (a static file it could not look up)
            log.error(
                "request_unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc
            )
        body_fields = [FieldError(field="body", message=exc.detail)] if status == 400 else []
        detail = f"body: {exc.detail}" if body_fields else exc.detail  # as the other 400s
        if status == 413:  # "Request Entity Too Large": the limit is what a client needs
            detail = f"the request body is over {request.app.state.settings.max_body_bytes} bytes"
        return problem(
            status,
            titles.get(status, "Request error"),
            detail,
            body_fields,
            headers=exc.headers,
        )
    log.error("request_unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "Internal error", "unexpected error")


def _body_error(
    message: str, event: str
) -> Callable[[Request[Any, Any, Any], Exception], Response[Any]]:
    """A handler for an error the JSON decoder raises past its own DecodeError, before a
    handler runs (the bodies Litestar decodes): a 400 naming `body` saying `message`.
    Without a body to blame, it is a bug like any other: a 500, logged with its traceback."""

    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if not _has_body(request):
            return _litestar_error(request, exc)
        log.info(event, path=request.url.path)
        return problem(400, "Invalid input", f"body: {message}", [FieldError("body", message)])

    return handle


def _has_body(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    headers = connection.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


async def require_json(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Route guard: a request that carries a body sends it as application/json; 415 is
    answered before the body is read, so no other media type is taken for malformed JSON.
    Async although it awaits nothing: Litestar runs a plain function guard in a thread."""
    refuse_content_coding(connection)
    media = connection.headers.get("content-type", "").split(";")[0].strip().lower()
    if _has_body(connection) and media != "application/json":
        raise UnsupportedMedia("send the body as application/json")


def refuse_content_coding(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """A body in a content coding (`Content-Encoding: gzip`) is a 415: none is decoded here,
    and read as it came a compressed body was called malformed JSON, and a body merely
    labelled so was stored as it was."""
    codings = {
        coding.strip().lower()
        for value in connection.headers.getall("content-encoding", [])
        for coding in value.split(",")
    } - {"", "identity"}
    if codings and _has_body(connection):
        named = ", ".join(sorted(codings))
        raise UnsupportedMedia(f"send the body without a Content-Encoding (not {named})")


HANDLERS: dict[int | type[Exception], Any] = {
    errors.MenosError: _menos_error,
    # a body nested a thousand levels deep reaches the decoder's recursion limit
    RecursionError: _body_error(NESTED_TOO_DEEPLY, "request_body_too_deep"),
    # invalid UTF-8 inside a JSON string escapes msgspec's DecodeError
    UnicodeDecodeError: _body_error(NOT_UTF8, "request_body_not_utf8"),
    lexc.HTTPException: _litestar_error,
    Exception: _litestar_error,
}

__all__ = [
    "HANDLERS",
    "NESTED_TOO_DEEPLY",
    "NOT_UTF8",
    "PROBLEM_JSON",
    "FieldError",
    "MediaType",
    "problem",
    "refuse_content_coding",
    "require_json",
]

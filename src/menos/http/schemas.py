"""Wire structs: request bodies and response views (never the storage models themselves)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import InternalServerException, SerializationException
from litestar.params import Body, KwargDefinition, QueryParameter

from menos import errors
from menos.http import errors as http_errors
from menos.http import validate
from menos.queue import models

T = TypeVar("T")

DataTier = Literal["compact", "full"]
# Filters the routes check themselves, naming the allowed values; the schema lists them too.
StatusFilter = Annotated[
    str | None, QueryParameter(schema_extra={"enum": list(models.JOB_STATUSES)})
]
ContentTypeFilter = Annotated[
    str | None, QueryParameter(schema_extra={"enum": list(models.CONTENT_TYPES)})
]
_AT = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


# Request bodies refuse fields they do not know: a misspelled `callback_url`, ignored, would
# lose its callbacks without a word. A route's body annotated with CLOSED says so in the
# OpenAPI schema too (`Annotated[Struct, CLOSED]`, and `| None` outside it when optional).
CLOSED = Body(schema_extra={"additionalProperties": False})
# The schema states the limits the routes check (validate), which msgspec itself does not.
Title = Annotated[str | None, KwargDefinition(max_length=validate.MAX_TITLE)]
CallbackUrl = Annotated[str | None, KwargDefinition(max_length=validate.MAX_URL)]


class ContentText(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/v1/content` as JSON."""

    text: str
    title: Title = None
    tags: list[str] | None = None
    callback_url: CallbackUrl = None
    data_tier: DataTier | None = None


class IngestRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/v1/ingest`."""

    url: Annotated[str, KwargDefinition(max_length=validate.MAX_URL)]
    transcript_text: str | None = None
    title: Title = None
    tags: list[str] | None = None
    callback_url: CallbackUrl = None
    data_tier: DataTier | None = None


class ReprocessRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/v1/content/{id}/reprocess` (every field optional)."""

    callback_url: CallbackUrl = None
    data_tier: DataTier | None = None
    transcript_text: str | None = None


class ReprocessView(msgspec.Struct, frozen=True):
    """The answer to a reprocess request."""

    job_id: uuid.UUID | None
    content_id: uuid.UUID
    status: Literal["submitted", "already_active", "already_completed"]


class Submitted(msgspec.Struct, frozen=True):
    """The answer to a submission."""

    job_id: uuid.UUID | None
    content_id: uuid.UUID
    content_type: models.ContentType
    resource_key: str
    status: models.JobStatus
    deduplicated: bool


class ContentItem(msgspec.Struct, frozen=True):
    """A content item in a list (no result, no body)."""

    content_id: uuid.UUID
    content_type: models.ContentType
    title: str | None
    source_url: str | None
    resource_key: str
    tags: list[str]
    processing_status: models.JobStatus
    processed_at: dt.datetime
    pipeline_version: str
    latest_job_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ContentView(ContentItem, frozen=True):
    """A content item as the API shows it: the list view and its result."""

    result: dict[str, Any] | None


class JobView(msgspec.Struct, frozen=True):
    """The minimal job view."""

    job_id: uuid.UUID
    content_id: uuid.UUID
    status: models.JobStatus
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error_code: str | None


class StageView(msgspec.Struct, frozen=True):
    """One stage's timing."""

    name: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_ms: float | None


class CallbackView(msgspec.Struct, frozen=True):
    """The state of a job's callback event."""

    url: str
    event_id: uuid.UUID
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None


class JobVerboseView(JobView, frozen=True, omit_defaults=True):
    """The verbose job view (`?verbose=true`); `full_payload` only for the full tier."""

    resource_key: str
    pipeline_version: str
    attempts: int
    worker_id: str | None
    current_stage: str | None
    cancel_requested_at: dt.datetime | None
    error_stage: str | None
    error_message: str | None
    data_tier: DataTier
    stages: list[StageView]
    diagnostics: dict[str, Any]
    callback: CallbackView | None
    full_payload: dict[str, Any] | None = None


class CancelView(msgspec.Struct, frozen=True, omit_defaults=True):
    """The answer to a cancel request."""

    job_id: uuid.UUID
    status: Literal["cancelled", "processing"]
    cancel_requested: bool = False


class Health(msgspec.Struct, frozen=True):
    """`GET /health`."""

    status: str
    app_version: str


class Ready(msgspec.Struct, frozen=True):
    """`GET /ready`."""

    status: str
    database: str
    pending_migrations: list[int]


def decode(body: bytes, into: type[T]) -> T:
    """Decode a JSON body; InvalidInput naming the field on any problem."""
    try:
        decoded = msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if unknown := http_errors.unknown_field(text):
            raise errors.InvalidInput(unknown, http_errors.UNKNOWN_FIELD) from None
        missing = _MISSING.search(text)
        at = _AT.search(text)
        field = (missing.group(1) if missing else (at.group(1) if at else "body")) or "body"
        message = text.split(" - at `", 1)[0]
        raise errors.InvalidInput(field, http_errors.plain(field, message)) from None
    except msgspec.DecodeError as exc:
        raise errors.InvalidInput("body", f"not valid JSON: {_decode_problem(body, exc)}") from None
    except RecursionError:
        raise errors.InvalidInput("body", http_errors.NESTED_TOO_DEEPLY) from None
    except UnicodeDecodeError:  # inside a string: msgspec lets it through
        raise errors.InvalidInput("body", http_errors.NOT_UTF8) from None
    refuse_repeated_keys(body)
    return decoded


def refuse_repeated_keys(body: bytes) -> None:
    """InvalidInput naming a key a decoded JSON body gives twice: msgspec keeps the last one
    silently, where a query parameter or form field given twice is refused."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> None:
        keys = [key for key, _ in items]
        repeated.extend(key for i, key in enumerate(keys) if key in keys[:i])

    # Python's parser hands each object's pairs over as they came; it reads what msgspec
    # read (a body it would refuse was refused already).
    with contextlib.suppress(ValueError, RecursionError):
        json.loads(body, object_pairs_hook=pairs)
    if repeated:
        raise errors.InvalidInput(repeated[0], validate.GIVEN_TWICE)


# How long a request body may take to arrive, from the first read (5 MiB at about 90 KB/s).
# The key was checked before: a body held back must not keep it usable much longer.
BODY_DEADLINE_S = 60.0


class JSONRequest(Request[Any, Any, Any]):
    """The API's requests: a JSON body that cannot be decoded is refused naming `body` as
    `decode` does, where Litestar would say only msgspec's words; a body (JSON or form) that
    takes over BODY_DEADLINE_S to arrive is a 408; one its client abandoned is no error of
    ours (logged at info, not as an unhandled one with its traceback)."""

    async def stream(self) -> AsyncGenerator[bytes]:
        deadline = asyncio.get_running_loop().time() + BODY_DEADLINE_S
        chunks = super().stream()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise http_errors.BodyTimeout(
                        f"the request body did not arrive within {BODY_DEADLINE_S:g} s"
                    ) from None
                except InternalServerException:  # Litestar's word for `http.disconnect`
                    raise http_errors.ClientGone(
                        "the client disconnected before its request body arrived"
                    ) from None
                yield chunk
        finally:
            await chunks.aclose()

    async def json(self) -> Any:
        try:
            decoded = await super().json()
        except SerializationException as exc:
            cause = exc.__cause__
            if not isinstance(cause, msgspec.DecodeError):
                raise
            problem = _decode_problem(await self.body(), cause)
            raise errors.InvalidInput("body", f"not valid JSON: {problem}") from None
        refuse_repeated_keys(await self.body())
        return decoded


def _decode_problem(body: bytes, exc: msgspec.DecodeError) -> str:
    """What is wrong with a body msgspec could not decode, in its words, except that it calls
    an unpaired high surrogate escape (`"\\ud800"`) truncated input: Python's parser reads
    such a body whole, so that is what it holds; and a byte order mark (which some editors and
    shells write) an invalid character at byte 0."""
    if body.startswith(codecs.BOM_UTF8):
        return "it starts with a byte order mark; send UTF-8 without one"
    if "truncated" in str(exc):
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            pass
        else:
            return "a string holds an unpaired UTF-16 surrogate escape"
    return str(exc)


def content_view(content: models.Content) -> ContentView:
    """The API view of a content item."""
    return msgspec.convert(content, ContentView, from_attributes=True)


def content_item(content: models.Content) -> ContentItem:
    """The list view of a content item (no result, no body)."""
    return msgspec.convert(content, ContentItem, from_attributes=True)


def job_view(job: models.Job) -> JobView:
    """The minimal API view of a job."""
    return msgspec.convert(job, JobView, from_attributes=True)


def job_verbose_view(job: models.Job, callback: models.Callback | None) -> JobVerboseView:
    """The verbose API view of a job; `full_payload` only for the full tier."""
    fields = msgspec.structs.asdict(job)
    fields["callback"] = callback
    fields["full_payload"] = job.full_payload if job.data_tier == "full" else None
    return msgspec.convert(fields, JobVerboseView, from_attributes=True)


def submitted(enqueued: models.Enqueued) -> Submitted:
    """The API answer for a submission."""
    return msgspec.convert(enqueued, Submitted, from_attributes=True)

"""Field checks shared by the routes; each failure names its field."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

from litestar import Request
from litestar.handlers import BaseRouteHandler
from litestar.params import QueryParameter

from menos import errors, markdown
from menos.http import errors as http_errors
from menos.pipeline import resource_keys, result, ssrf

T = TypeVar("T")

MAX_TITLE = 500
MAX_URL = resource_keys.MAX_URL_LENGTH  # a page's URL and a callback URL alike
MAX_TAG = result.MAX_TAG_CHARS  # the tag index's limit, the same for result tags
MAX_TAGS = 50
GIVEN_TWICE = "given more than once"
UNKNOWN_QUERY_PARAMETER = "unknown query parameter"


async def query_once(request: Request[Any, Any, Any]) -> None:
    """Before each /api/v1 handler: each query parameter one the route knows (a misspelled
    filter is never ignored: `?stauts=failed` would list everything), given once (Litestar
    would keep the last). The probes, /metrics and /schema ignore their query strings."""
    known = _query_names(request.route_handler)
    query: bytes = request.scope["query_string"]
    if query:
        _utf8_query(query)
    for name in request.query_params:
        if name not in known:
            raise errors.InvalidInput(name, UNKNOWN_QUERY_PARAMETER)
        values = request.query_params.getall(name)
        if len(values) > 1:
            raise errors.InvalidInput(name, GIVEN_TWICE)
        # Litestar's conversion takes `1e1` and `2.0` for whole numbers: `?limit=1e1` is 10.
        if known[name] and not _DIGITS.fullmatch(values[0]):
            raise errors.InvalidInput(name, http_errors.WHOLE_NUMBER)


_DIGITS = re.compile(r"[0-9]+")


def _utf8_query(query: bytes) -> None:
    """Each name and value, percent-decoded, is UTF-8: Litestar reads other bytes as
    replacement characters, so `?tag=%ff` listed nothing instead of saying why."""
    for pair in query.split(b"&"):
        name, _, value = (
            urllib.parse.unquote_to_bytes(part.replace(b"+", b" ")) for part in pair.partition(b"=")
        )
        for part in (name, value):
            try:
                part.decode()
            except UnicodeDecodeError:
                raise errors.InvalidInput(
                    name.decode(errors="replace"), "not valid UTF-8"
                ) from None


def _query_names(handler: BaseRouteHandler) -> dict[str, bool]:
    """The query parameters a route handler declares (by their alias when they have one),
    each with whether it takes a whole number."""
    return {
        parameter.kwarg_definition.query or name: parameter.annotation in (int, int | None)
        for name, parameter in handler.parsed_fn_signature.parameters.items()
        if isinstance(parameter.kwarg_definition, QueryParameter)
    }


class Fields:
    """A route's independent field checks, run all before any fails: a 400 names every
    invalid field at once, not only the first one (DESIGN §4)."""

    def __init__(self) -> None:
        self.failed: list[errors.InvalidInput] = []

    def check(self, run: Callable[[], T]) -> T | None:
        """`run()`, or None when it finds its field invalid (kept for `raise_invalid`)."""
        with self._kept():
            return run()
        return None

    async def check_async(self, run: Callable[[], Awaitable[T]]) -> T | None:
        """As `check`, for a check that awaits (the callback URL's DNS lookup)."""
        with self._kept():
            return await run()
        return None

    @contextlib.contextmanager
    def _kept(self) -> Iterator[None]:
        try:
            yield
        except errors.InvalidInput as exc:
            self.failed += [exc, *exc.also]

    def raise_invalid(self) -> None:
        """One InvalidInput naming each field that failed, in the order they were checked."""
        if self.failed:
            first, *others = self.failed
            also = tuple(errors.InvalidInput(other.field, other.message) for other in others)
            raise errors.InvalidInput(first.field, first.message, also=also)


def choice(field: str, value: str | None, allowed: Sequence[str]) -> str | None:
    """A filter that takes one of `allowed` values, or none."""
    if value is not None and value not in allowed:
        raise errors.InvalidInput(field, "must be one of " + ", ".join(allowed))
    return value


def text(field: str, value: str | None, *, max_chars: int, required: bool = False) -> str | None:
    """A text field: no NUL characters, within its size; blank counts as missing, except for
    the fields whose mere presence asks for something (a supplied transcript, a callback)."""
    if value is None or not value.strip():
        if required or (value is not None and field in ("transcript_text", "callback_url")):
            raise errors.InvalidInput(field, "must not be blank")
        return None
    if "\x00" in value:
        raise errors.InvalidInput(field, "must not contain NUL characters")
    if len(value) > max_chars:
        raise errors.InvalidInput(field, f"must be at most {max_chars} characters")
    return value


def tags(
    values: Sequence[str] | None, field: str = "tags", *, comma_separated: bool = False
) -> list[str]:
    """Submitter tags: trimmed, non-blank, de-duplicated, at most 50 of at most 100 characters.
    With `comma_separated`, each value may hold several; a fault names the value as sent."""
    kept: dict[str, None] = {}  # the distinct tags, in order
    faults = Fields()  # each invalid tag is named, not only the first
    parts = (
        (index, part.strip())  # trimmed
        for index, value in enumerate(values or [])
        # split and trimmed as frontmatter's tags are: `a, b` has a space after the comma
        for part in (markdown.split_tags([value]) if comma_separated else [value])
    )
    for index, part in parts:
        if not part or part in kept:  # a blank or a repeat changes nothing: not checked again
            continue
        tag = faults.check(partial(text, f"{field}[{index}]", part, max_chars=MAX_TAG))
        if tag is not None:
            kept[tag] = None
        # The answer is a 400 from here on: a body of a million tags must neither hold the
        # event loop for seconds nor be answered with a fault for each (60 MB for 5 MB).
        if len(faults.failed) >= MAX_TAGS or len(kept) > MAX_TAGS:
            break
    faults.raise_invalid()
    distinct = list(kept)
    if len(distinct) > MAX_TAGS:
        raise errors.InvalidInput(field, f"at most {MAX_TAGS} tags")
    return distinct


def note_tags(from_note: Sequence[str], *, note_field: str) -> list[str]:
    """A note's frontmatter tags (already trimmed, non-blank), de-duplicated; their faults are
    the note's field's: the client may not have sent a `tags` field at all."""
    for tag in from_note:
        if len(tag) > MAX_TAG:
            raise errors.InvalidInput(
                note_field, f"frontmatter tag {tag[:20]!r}… is over {MAX_TAG} characters"
            )
    kept = markdown.merge_tags(from_note)
    if len(kept) > MAX_TAGS:
        raise errors.InvalidInput(note_field, f"frontmatter tags: at most {MAX_TAGS} tags")
    return kept


def merged_tags(requested: Sequence[str], from_note: Sequence[str]) -> list[str]:
    """The request's checked tags, then the note's: at most 50 in all, duplicates removed
    keeping the first."""
    merged = markdown.merge_tags(requested, from_note)
    if len(merged) > MAX_TAGS:
        raise errors.InvalidInput("tags", f"at most {MAX_TAGS} tags, the frontmatter's included")
    return merged


async def callback_url(value: str | None, *, allow_private: bool) -> str | None:
    """A callback URL as well-formed as `url` must be, that passes the SSRF rule (400 when
    malformed, refused or unresolvable); the one check of every route taking one."""
    url = text("callback_url", value, max_chars=MAX_URL)
    if url is None:
        return None
    resource_keys.check_url(url.strip(), "callback_url")
    await ssrf.resolve_checked(url.strip(), allow_private=allow_private, field="callback_url")
    return url.strip()

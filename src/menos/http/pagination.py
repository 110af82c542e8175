"""Opaque list cursors and the `limit` rule shared by every list route."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

from menos import errors

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
# `limit` as a route takes it: its range and default are in the schema, and `limit()` applies
# them, naming it.
Limit = Annotated[
    int | None,
    QueryParameter(schema_extra={"minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
]


class PageView(msgspec.Struct, Generic[T], frozen=True):
    """`{"items": [...], "next_cursor": string | null}`."""

    items: list[T]
    next_cursor: str | None


def encode(key: tuple[dt.datetime, uuid.UUID] | None) -> str | None:
    """The opaque cursor for the item after `key` (None: there is no next page)."""
    if key is None:
        return None
    raw = msgspec.json.encode([key[0].isoformat(), str(key[1])])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    """The position a cursor stands for; InvalidInput naming `cursor` when it is not ours."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, key = msgspec.json.decode(raw, type=tuple[str, str])
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when.astimezone(dt.UTC), uuid.UUID(key)  # in range for the database too
    except (ValueError, OverflowError, msgspec.DecodeError, msgspec.ValidationError, TypeError):
        raise errors.InvalidInput("cursor", "not a cursor returned by this API") from None


def limit(value: int | None) -> int:
    """The page size: 1-100, default 50."""
    if value is None:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        raise errors.InvalidInput("limit", f"must be between 1 and {MAX_LIMIT}")
    return value

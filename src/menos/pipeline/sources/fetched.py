"""What a source's fetch returns: the text to work on, a title and source metadata."""

from __future__ import annotations

import unicodedata
from typing import Any

import msgspec

TITLE_MAX_CHARS = 500  # a title or channel name is cut here (the API's title limit)


class Fetched(msgspec.Struct, frozen=True):
    """The fetched text (`body`), the source's title if it has one, and `source_metadata`."""

    body: str
    title: str | None
    metadata: dict[str, Any]


def one_line(text: str | None) -> str | None:
    """A source's title or name as one line: whitespace runs made one space, other control
    characters (a terminal's escape sequences) dropped, cut at TITLE_MAX_CHARS; None when
    nothing is left."""
    kept = "".join(
        char for char in text or "" if char.isspace() or unicodedata.category(char) != "Cc"
    )
    return " ".join(kept.split())[:TITLE_MAX_CHARS] or None

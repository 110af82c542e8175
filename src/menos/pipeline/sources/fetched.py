"""What a source's fetch returns: the text to work on, a title and source metadata."""

from __future__ import annotations

from typing import Any

import msgspec


class Fetched(msgspec.Struct, frozen=True):
    """The fetched text (`body`), the source's title if it has one, and `source_metadata`."""

    body: str
    title: str | None
    metadata: dict[str, Any]

"""Values PostgreSQL can store: its text and JSON types refuse NUL characters, and UTF-8
cannot encode a lone surrogate (JSON's "\\ud800", a file name's undecodable byte). Both
become U+FFFD."""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text(value: str) -> str:
    """`value` with NUL characters and lone surrogates replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", value)


def anything(value: Any) -> Any:
    """`value` (str, list, dict, scalars) with every string, keys included, made storable."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, list):
        return [anything(item) for item in value]
    if isinstance(value, dict):
        return {anything(key): anything(item) for key, item in value.items()}
    return value

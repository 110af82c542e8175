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
    """`value` (str, list, dict, scalars) with every string, keys included, made storable.

    Without recursion: a model's answer nests as deep as the JSON decoder goes, and two
    Python frames a level (function and comprehension) ran out of stack at half that depth."""
    made = _shell(value)
    pending = [(value, made)]
    while pending:
        source, target = pending.pop()
        if isinstance(source, list):
            for item in source:
                target.append(_shell(item))
                if isinstance(item, list | dict):
                    pending.append((item, target[-1]))
        elif isinstance(source, dict):
            for key, item in source.items():
                shell = _shell(item)
                target[text(key) if isinstance(key, str) else key] = shell
                if isinstance(item, list | dict):
                    pending.append((item, shell))
    return made


def _shell(value: Any) -> Any:
    """An empty container of the same kind, or the scalar itself made storable."""
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return {}
    return text(value) if isinstance(value, str) else value

"""Markdown notes: frontmatter, title and tag rules shared by the upload route and the pipeline."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import frontmatter
import msgspec

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class Note(msgspec.Struct, frozen=True):
    """A markdown document split into its frontmatter and its text."""

    metadata: dict[str, Any]
    text: str


def parse(raw: str) -> Note:
    """Split frontmatter from text; a broken frontmatter block is kept as plain text."""
    try:
        post = frontmatter.loads(raw)
    except Exception:  # malformed YAML: the note is still readable as it is
        return Note(metadata={}, text=raw)
    metadata = {str(k): v for k, v in post.metadata.items()}
    return Note(
        metadata=msgspec.to_builtins(metadata, str_keys=True, enc_hook=str), text=post.content
    )


def first_heading(text: str) -> str | None:
    """The first markdown heading's text, if any."""
    match = _HEADING.search(text)
    return match.group(1).strip() if match else None


def frontmatter_tags(metadata: dict[str, Any]) -> list[str]:
    """Tags from frontmatter `tags` (a list or a comma-separated string)."""
    value = metadata.get("tags")
    if isinstance(value, str):
        return split_tags([value])
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return []


def split_tags(values: Iterable[str]) -> list[str]:
    """Tags given as repeated fields and/or comma-separated strings."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def merge_tags(*groups: Iterable[str]) -> list[str]:
    """Concatenate tag lists, de-duplicated keeping the first occurrence."""
    seen: dict[str, None] = {}
    for group in groups:
        for tag in group:
            seen.setdefault(tag, None)
    return list(seen)


def choose_title(requested: str | None, note: Note, filename: str | None) -> str | None:
    """The request's title, else the frontmatter's, else the file name or first heading."""
    if requested and requested.strip():
        return requested.strip()
    fm_title = note.metadata.get("title")
    if isinstance(fm_title, str) and fm_title.strip():
        return fm_title.strip()
    if filename:
        stem = filename.rsplit("/", 1)[-1]
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        if stem.strip():
            return stem.strip()
    return first_heading(note.text)

"""Markdown notes: frontmatter, title and tag rules shared by the upload route and the pipeline."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import frontmatter
import msgspec
import yaml
from frontmatter.default_handlers import JSONHandler, YAMLHandler

from menos.pipeline.sources import fetched

# The lines first_heading looks at: one that may open fenced code (up to 3 spaces, perhaps a
# list item's marker, then 3 or more ` or ~, then the rest of the line), an ATX heading line,
# whose closing `#`s are cut in Python (indented by spaces only: a tab makes it indented
# code), or a setext heading's underline (below). Only spaces and tabs after the `#`: `\s`
# also matches newlines, and a lazy text group followed by optional trailing space and `#`
# runs backtracks in cubic time over a line of spaces (2,000 spaces took 10 s on the API's
# event loop). Then the lines that may close the code. Searched
# for, not split into lines: a Python step for every line of a 5 MiB note of short lines took a
# second of the API's event loop.
_FENCE_OR_HEADING = (
    r"^(?:([ ]{0,3}(?:[-+*]|\d{1,9}[.)])[ ]{1,4})?[ ]{0,3}(`{3,}|~{3,})(.*)"
    r"|[ ]{0,3}#{1,6}[ \t]+(\S.*)"
)
_FENCES_AND_HEADINGS = re.compile(_FENCE_OR_HEADING + ")$", re.MULTILINE)
# The same, and a setext heading's underline (a paragraph above it is its text): looked for
# in a note's first UNDERLINES_WITHIN characters only, as every line of `-` is one to judge.
_FENCES_HEADINGS_AND_UNDERLINES = re.compile(
    _FENCE_OR_HEADING + r"|[ ]{0,3}(?:=+|-+)[ \t]*)$", re.MULTILINE
)
UNDERLINES_WITHIN = 64 * 1024
# A `---` line, as python-frontmatter delimits a YAML block; the first opens the note.
_DELIMITER = re.compile(r"^-{3,}[ \t]*$", re.MULTILINE)
_OPENING_DELIMITER = re.compile(r"\A\s*^-{3,}[ \t]*$", re.MULTILINE)
# Blank lines opening a note: dropped, but not the indentation of its first line, which makes
# that line indented code (`    # install` is no heading).
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# Lines that are no paragraph's text, so no underline makes them a heading: a list item or a
# quote (the underline is then a thematic break, or the item's text), indented code, an HTML
# block; and a thematic break, which ends the paragraph above it.
_NOT_PARAGRAPH = re.compile(r"[ ]{0,3}(?:[-+*>]|\d{1,9}[.)])(?:[ \t]|$)|[ ]{4}|\t|[ ]{0,3}<")
# Lines that interrupt a paragraph (CommonMark): a list item with text (an ordered one only
# numbered 1), a quote, an HTML comment. An underline below one belongs to that block, so the
# paragraph above is no heading's text ("para\n- item\n---" has a thematic break).
_INTERRUPTS = re.compile(r"[ ]{0,3}(?:(?:[-+*]|1[.)])[ \t]+\S|>|<!--)")
_THEMATIC_BREAK = re.compile(r"[ ]{0,3}([*_])(?:[ \t]*\1){2,}[ \t]*")
_CLOSING_FENCE = re.compile(r"^([ ]*)(`{3,}|~{3,})[ \t]*$", re.MULTILINE)


class Note(msgspec.Struct, frozen=True):
    """A markdown document split into its frontmatter and its text."""

    metadata: dict[str, Any]
    text: str


# libyaml's reader (PyYAML's C extension) where it is built, about six times as fast as the
# pure-Python one, which it would otherwise fall back to; it refuses nesting over 1,000 levels.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TextLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """The safe loader, but a plain scalar other than null and `true`/`false` is its text as
    written: YAML 1.1 read the tag `1:1` as 61 (base 60), `3.10` as 3.1, `02134` as an octal
    number and `yes`, `no`, `on`, `off` as booleans (dropped as tags, a title `true`)."""


_RETYPED = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp")}
_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _RETYPED]
    for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}
_TextLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_without_aliases(block: str) -> Any:
    """YAML's safe loader without aliases: a few hundred bytes of nested aliases expand into
    millions of values. The events are read first, so an alias is refused before anything is
    built."""
    for event in yaml.parse(block, Loader=_TextLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed in frontmatter")
    return yaml.load(block, Loader=_TextLoader)


class _FrontmatterYAML(YAMLHandler):
    def load(self, fm: str, **kwargs: object) -> Any:
        data = _load_without_aliases(fm)
        # python-frontmatter drops a list or scalar block silently; it is the note's own text.
        # An empty block (None) is just empty frontmatter.
        if data is not None and not isinstance(data, dict):
            raise yaml.YAMLError("frontmatter is not a mapping")
        return data


# As python-frontmatter's own choice (YAML between `---` lines, JSON in braces), but YAML
# without aliases. A handler is only ever given for a note that starts with its delimiter: a
# given handler splits at the first two `---` lines anywhere (two thematic breaks).
_HANDLERS = [_FrontmatterYAML(), JSONHandler()]


# The YAML reader runs on the caller's event loop (about 10 µs a line with libyaml, 50 µs
# without): a block of metadata is a few lines, and one longer than this is not read.
FRONTMATTER_MAX_CHARS = 64 * 1024


def parse(raw: str) -> Note:
    """Split frontmatter from text. A frontmatter block that is not plain YAML data (broken,
    not a mapping, using aliases, nested too deeply, or holding NUL characters or lone
    surrogates, which no text field and no JSON column accepts), or is longer than
    FRONTMATTER_MAX_CHARS, is kept as plain text. A leading UTF-8 byte-order mark is
    dropped: editors write one, and it hides the frontmatter. Line endings become `\n`: a
    CR alone ends a line in markdown too, and YAML and the heading search see only `\n`."""
    raw = raw.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    handler = frontmatter.detect_format(raw.strip(), _HANDLERS)
    if handler is None:
        return Note(metadata={}, text=_trimmed(raw))
    try:
        block, rest = handler.split(raw)
        if len(block) > FRONTMATTER_MAX_CHARS:
            raise ValueError("frontmatter over the limit")
        # parse, not loads: loads passes the keys to Post(content, handler, **metadata), which
        # refuses a key that is no string (`2024:`) or is named `content` or `handler`.
        found, _ = frontmatter.parse(raw, handler=handler)
        metadata = msgspec.to_builtins(
            {str(k): v for k, v in found.items()}, str_keys=True, enc_hook=str
        )
        msgspec.json.encode(metadata)  # refuses lone surrogates (YAML's "\\ud800"), as UTF-8 does
        if _holds_nul(metadata):
            raise ValueError("NUL in frontmatter")
    except Exception:  # the note is still readable as it is
        return Note(metadata={}, text=raw)
    # python-frontmatter strips the text after the block, and its first line's indentation
    return Note(metadata=metadata, text=_trimmed(rest))


def _trimmed(text: str) -> str:
    """The text without its leading blank lines and trailing whitespace."""
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def first_heading(text: str) -> str | None:
    """The first markdown heading's text, if any: an ATX heading's (its closing `#` sequence
    removed) or a setext heading's (a paragraph underlined with `=` or `-`, made one line). A
    line in fenced code (a shell comment: `# install`) is no heading."""
    pos = 0
    frontmatter_end = _kept_frontmatter_end(text)
    while (line := _lines_to_judge(pos).search(text, pos)) is not None:
        start, pos = pos, line.end()
        item, fence, after, heading = line.groups()
        if fence is None and heading is None:  # an underline
            if frontmatter_end <= line.start() < UNDERLINES_WITHIN:
                above = _paragraph_above(text[start : line.start()])
                if above is not None:
                    return above
            continue
        if fence is not None:
            if fence[0] == "`" and "`" in after:
                continue  # inline code (```a`), no fence
            # inside: only a fence of the same character, as long, with nothing after closes
            # it; in a list item (`- ```sh`) it is indented up to 3 past the item's text
            indent = 3 + (len(item) if item else 0)
            while (closing := _CLOSING_FENCE.search(text, pos)) is not None:
                pos = closing.end()
                spaces, closer = closing.groups()
                if len(spaces) <= indent and closer.startswith(fence):
                    break
            else:
                return None  # unclosed: code to the end
            continue
        heading = heading.rstrip()
        unclosed = heading.rstrip("#")
        if unclosed != heading and (not unclosed or unclosed[-1] in " \t"):
            heading = unclosed.rstrip()  # `# Title ##`; but `# C#` keeps its `#`
        if heading:
            return heading
    return None


def _kept_frontmatter_end(text: str) -> int:
    """Where a `---` block opening the note ends (0 without one): frontmatter that parse()
    kept as text (broken YAML, aliases, a NUL), whose `---` lines are no underlines: its
    first line is not the note's title."""
    opening = _OPENING_DELIMITER.match(text)
    if opening is None:
        return 0
    closing = _DELIMITER.search(text, opening.end(), UNDERLINES_WITHIN)
    return closing.end() if closing is not None else 0


def _lines_to_judge(pos: int) -> re.Pattern[str]:
    return _FENCES_HEADINGS_AND_UNDERLINES if pos < UNDERLINES_WITHIN else _FENCES_AND_HEADINGS


def _paragraph_above(text: str) -> str | None:
    """The paragraph `text` ends with (its last lines, up to a blank line or a thematic
    break), made one line; None when it ends with none."""
    lines: list[str] = []
    for line in reversed(text.split("\n")[:-1]):  # [-1]: what follows the last newline, ""
        if not line.strip() or _THEMATIC_BREAK.fullmatch(line):
            break
        if _INTERRUPTS.match(line):
            return None
        lines.append(line)
    if not lines or _NOT_PARAGRAPH.match(lines[-1]):  # judged by its first line
        return None
    return " ".join(line.strip() for line in reversed(lines))


def frontmatter_tags(metadata: dict[str, Any]) -> list[str]:
    """Tags from frontmatter `tags` (a list or a comma-separated string). Strings and numbers
    count, numbers as their text; null, booleans, lists and mappings are no tags."""
    value = metadata.get("tags")
    if isinstance(value, str):
        return split_tags([value])
    texts = (_tag_text(item) for item in (value if isinstance(value, list) else [value]))
    return [text.strip() for text in texts if text is not None and text.strip()]


def _tag_text(value: object) -> str | None:
    # bool is an int to Python, but `true` is no tag anyone wrote on purpose.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)


def _scalar_text(value: Any) -> str | None:
    """A frontmatter scalar as text (`12345`, `1.5`, `true`); None for null, lists and maps."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as written in YAML, not Python's True
    if isinstance(value, str | int | float):
        return str(value)
    return None


def split_tags(values: Iterable[str]) -> list[str]:
    """The tags in comma-separated strings, trimmed, blanks dropped."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def merge_tags(*groups: Iterable[str]) -> list[str]:
    """Concatenate tag lists, de-duplicated keeping the first occurrence."""
    seen: dict[str, None] = {}
    for group in groups:
        for tag in group:
            seen.setdefault(tag, None)
    return list(seen)


def choose_title(requested: str | None, note: Note, filename: str | None) -> str | None:
    """The request's title, else the frontmatter's, else the file name or first heading. One
    taken from the note is made one line without control characters, as a fetched page's is."""
    if requested and requested.strip():
        return requested.strip()
    fm_title = fetched.one_line(_scalar_text(note.metadata.get("title")))
    if fm_title is not None:
        return fm_title
    if filename:
        name = filename.rsplit("/", 1)[-1]
        stem = fetched.one_line(name.rsplit(".", 1)[0] if "." in name else name)
        if stem is not None:
            return stem
    return fetched.one_line(first_heading(note.text))

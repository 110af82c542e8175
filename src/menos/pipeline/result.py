"""Parse stage: find the JSON object in an analyzer's answer and coerce it into a Result (§5.4)."""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Collection
from typing import Any

import msgspec

from menos import errors, storable

RESULT_FIELDS = frozenset(
    {
        "summary",
        "tags",
        "tier",
        "tier_explanation",
        "quality_score",
        "score_explanation",
        "topics",
        "entities",
    }
)
TIERS = ("S", "A", "B", "C", "D")
DEFAULT_TIER = "C"
DEFAULT_SCORE = 50
DEFAULT_CONFIDENCE = 0.5
MAX_TAGS = 10
MAX_NEW_TAGS = 3
MAX_TOPICS = 7
# Bounds of the free-text fields, so one answer cannot store megabytes (the summary also travels
# in every callback body). Longer text is cut at a word boundary and marked with `…`.
MAX_SUMMARY_CHARS = 4_000
MAX_EXPLANATIONS = 10
MAX_EXPLANATION_CHARS = 1_000
MAX_HIERARCHY = 10
MAX_ENTITIES = 50
MAX_NAME_CHARS = 200  # a topic's name or level, an entity's type or name
# Longer tags do not fit the tag index; submitter tags have the same limit.
MAX_TAG_CHARS = 100
TAG_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")

# `<think>` and `<thinking>`: models use both names for their reasoning.
_THINK_TAG = re.compile(r"<think(?:ing)?\b", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"^\s*<think(?:ing)?\b[^>]*>", re.IGNORECASE)
# Fence markers only at a line start or end: a JSON string cannot span a raw newline, so these
# never cut into a string value.
_FENCE_OPEN = re.compile(r"^[ \t]*```[\w.+-]*", re.MULTILINE)
_FENCE_CLOSE = re.compile(r"```[ \t]*$", re.MULTILINE)


class Topic(msgspec.Struct, frozen=True):
    """A subject the content is about; `hierarchy` runs from broadest to narrowest."""

    name: str
    hierarchy: list[str]
    confidence: float


class Entity(msgspec.Struct, frozen=True):
    """A named thing the content mentions."""

    type: str
    name: str


class Result(msgspec.Struct, frozen=True):
    """The validated analysis stored in `content.result`."""

    summary: str
    tags: list[str]
    new_tags: list[str]
    tier: str
    tier_explanation: list[str]
    quality_score: int
    score_explanation: list[str]
    topics: list[Topic]
    entities: list[Entity]
    model: str
    processed_at: datetime.datetime


def _without_noise(text: str) -> tuple[str, int]:
    """The answer without `<think>` blocks and code fence markers, and where its reasoning
    ends. A stray closing tag means the opening one was in the chat template: the reasoning
    ends at the last one (0 without one), and an object ending before it is a draft. An
    object reaching past it quotes the tag: a summary about reasoning models. An unclosed
    `<think>` leading the answer runs to the end: nothing is left."""
    text = _drop_think_blocks(text)
    closes = list(_THINK_CLOSE.finditer(text))
    reasoning_end = closes[-1].start() if closes else 0
    if _THINK_OPEN.match(text[closes[-1].end() :] if closes else text):
        return "", 0
    reasoning = _without_fences(text[:reasoning_end])
    return reasoning + _without_fences(text[reasoning_end:]), len(reasoning)


def _without_fences(text: str) -> str:
    return _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", text))


def _drop_think_blocks(text: str) -> str:
    """Text without its `<think …>…</think>` blocks, in one pass. A regular expression for a
    block retries at every later `<think` once one has no closing tag (or no `>`), and an
    answer of many of them held the worker's event loop for hours."""
    kept: list[str] = []
    position = 0
    while (opening := _THINK_TAG.search(text, position)) is not None:
        tag_end = text.find(">", opening.end())
        if tag_end == -1:
            break  # no later `<think` has its `>` either
        closing = _THINK_CLOSE.search(text, tag_end + 1)
        if closing is None:
            break  # no later block closes either
        kept.append(text[position : opening.start()])
        position = closing.end()
    kept.append(text[position:])
    return "".join(kept)


# How many `{` an answer's JSON object is looked for at, not counting those the decoder
# refuses within CHEAP_START_CHARS (code quoted in prose: `{ return x; }`).
MAX_JSON_STARTS = 64
CHEAP_START_CHARS = 32
# What all tries together may read: SEARCH_PASSES times the answer, plus SEARCH_SLACK_CHARS.
# Each try may read to the end of the answer: an answer of many open objects over a long
# tail stops the search after a few such tries (64 of 8 MiB held the worker's event loop for
# a minute, twice with the repair call) instead of costing quadratic time.
SEARCH_PASSES = 3
SEARCH_SLACK_CHARS = 2**16
# Python refuses to convert an integer of more digits (int_max_str_digits): such a value is
# kept as its text, a value of the wrong type that the field's rule replaces.
_MAX_INT_DIGITS = 4000


def _integer(digits: str) -> int | str:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else digits


def extract_json(text: str) -> dict[str, Any] | None:
    """Return the first balanced `{…}` that parses as a JSON object after stripping noise and
    ends after the reasoning, looking at the braces after the reasoning (at most
    MAX_JSON_STARTS that read far, within the search's budget), then at those before it (an
    object quoting `</think>` starts there).

    An object nesting deeper than the decoder goes is skipped whole: every `{` inside it
    would be as deep, and retrying each would cost quadratic time."""
    cleaned, reasoning_end = _without_noise(text)
    found = _first_object(cleaned, reasoning_end, reasoning_end)
    if found is None and reasoning_end:
        found = _first_object(cleaned, 0, reasoning_end)
    return found


def _first_object(cleaned: str, start: int, reasoning_end: int) -> dict[str, Any] | None:
    decoder = json.JSONDecoder(parse_int=_integer)
    start = cleaned.find("{", start)
    counted = 0
    budget = SEARCH_PASSES * len(cleaned) + SEARCH_SLACK_CHARS
    while start != -1 and counted < MAX_JSON_STARTS and budget > 0:
        try:
            # raw_decode reads one JSON value and stops at its end, so braces inside strings
            # and trailing prose are handled by the JSON grammar itself.
            value, end = decoder.raw_decode(cleaned, start)
        except json.JSONDecodeError as exc:
            # An unterminated string is reported where it starts, but was read to the end.
            end = len(cleaned) if exc.msg.startswith("Unterminated string") else exc.pos
            following = start + 1
        except ValueError:  # not the grammar's: counted as read to the end
            end, following = len(cleaned), start + 1
        except RecursionError:
            end = following = _end_of_nesting(cleaned, start)
        else:
            if isinstance(value, dict) and end > reasoning_end:
                return value
            following = start + 1
        counted += end - start > CHEAP_START_CHARS
        budget -= end - start + 1
        start = cleaned.find("{", following)
    return None


def _end_of_nesting(text: str, start: int) -> int:
    """Where the brackets opened at `start` close (strings skipped), or the end of text."""
    depth, index, size = 0, start, len(text)
    while index < size:
        char = text[index]
        if char == '"':
            index += 1
            while index < size and text[index] != '"':
                index += 2 if text[index] == "\\" else 1
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return size


def coerce(
    raw: dict[str, Any],
    *,
    known_tags: Collection[str],
    model: str,
    processed_at: datetime.datetime,
) -> Result:
    """Coerce a model's JSON object into a Result; fields of the wrong type take their default.

    Every string is storable: NUL characters and lone surrogates become U+FFFD.
    Raises PipelineError("PARSE_FAILED") when the object has none of the result fields.
    """
    if not RESULT_FIELDS.intersection(raw):
        keys = ", ".join(sorted(str(key) for key in raw)[:10]) or "none"
        raise errors.PipelineError(
            "PARSE_FAILED", f"the JSON object has none of the result fields (keys: {keys})"
        )
    raw = storable.anything(raw)  # coercion only keeps or trims the answer's strings
    tags = coerce_tags(raw.get("tags"), known_tags=known_tags)
    known = set(known_tags)
    return Result(
        summary=trim(_string(raw.get("summary")), MAX_SUMMARY_CHARS),
        tags=tags,
        new_tags=[tag for tag in tags if tag not in known],
        tier=coerce_tier(raw.get("tier")),
        tier_explanation=coerce_explanation(raw.get("tier_explanation")),
        quality_score=coerce_score(raw.get("quality_score")),
        score_explanation=coerce_explanation(raw.get("score_explanation")),
        topics=coerce_topics(raw.get("topics")),
        entities=coerce_entities(raw.get("entities")),
        model=storable.text(model),  # from settings: an environment value may hold surrogates
        processed_at=processed_at,
    )


def coerce_tier(value: object) -> str:
    """Upper-case a tier; anything outside S A B C D becomes C."""
    if isinstance(value, str) and value.strip().upper() in TIERS:
        return value.strip().upper()
    return DEFAULT_TIER


def coerce_score(value: object) -> int:
    """Round a number or numeric string and clamp it to 1..100; anything else becomes 50."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return DEFAULT_SCORE
    number = _finite(value)
    return DEFAULT_SCORE if number is None else max(1, min(100, round(number)))


def normalize_tag(value: str) -> str | None:
    """Lower-case a tag and turn spaces and underscores into `-`; None when it is not valid
    (not matching TAG_PATTERN or longer than MAX_TAG_CHARS)."""
    tag = value.strip().lower().replace(" ", "-").replace("_", "-")
    return tag if len(tag) <= MAX_TAG_CHARS and TAG_PATTERN.match(tag) else None


def coerce_tags(value: object, *, known_tags: Collection[str]) -> list[str]:
    """Valid, distinct tags in answer order: at most 10, of which at most 3 the owner never used."""
    if not isinstance(value, list):
        return []
    known = set(known_tags)
    kept: list[str] = []
    new_count = 0
    for item in value:
        if len(kept) >= MAX_TAGS:
            break
        if not isinstance(item, str):
            continue
        tag = normalize_tag(item)
        if tag is None or tag in kept:
            continue
        if tag not in known:
            if new_count >= MAX_NEW_TAGS:
                continue
            new_count += 1
        kept.append(tag)
    return kept


def coerce_explanation(value: object) -> list[str]:
    """A string or a list of strings as a list of non-blank strings: the first
    MAX_EXPLANATIONS, each cut at MAX_EXPLANATION_CHARS."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    kept: list[str] = []
    for item in items:
        if len(kept) >= MAX_EXPLANATIONS:
            break
        text = _string(item)
        if text:
            kept.append(trim(text, MAX_EXPLANATION_CHARS))
    return kept


def coerce_confidence(value: object) -> float:
    """A number, numeric string or high/medium/low (0.9/0.7/0.5), clamped to 0..1."""
    number: float | None
    if isinstance(value, bool):
        return DEFAULT_CONFIDENCE
    if isinstance(value, int | float):
        number = _finite(value)
    elif isinstance(value, str):
        match value.strip().lower():
            case "high":
                return 0.9
            case "medium":
                return 0.7
            case "low":
                return 0.5
            case other:
                number = _finite(other)
    else:
        return DEFAULT_CONFIDENCE
    if number is None:
        return DEFAULT_CONFIDENCE
    return max(0.0, min(1.0, number))


def _finite(value: int | float | str) -> float | None:
    """A number or numeric string as a finite float; None when it is not one (NaN, infinite,
    or an integer beyond float range, which JSON allows)."""
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def split_hierarchy(value: str) -> list[str]:
    """Split `a > b > c` into its non-blank parts."""
    return [part.strip() for part in value.split(">") if part.strip()]


def _hierarchy(given: object, name: str) -> list[str]:
    """The levels of a topic, from its `hierarchy` (a string or a list of strings) or else its
    name: at most MAX_HIERARCHY, each cut at MAX_NAME_CHARS."""
    parts: list[str] = []
    if isinstance(given, str):
        parts = split_hierarchy(given)
    elif isinstance(given, list):
        for item in given:
            if isinstance(item, str):
                parts += split_hierarchy(item)
            if len(parts) >= MAX_HIERARCHY:
                break
    if not parts:
        parts = split_hierarchy(name)
    return [trim(part, MAX_NAME_CHARS) for part in parts[:MAX_HIERARCHY]]


def coerce_topic(value: object) -> Topic | None:
    """One topic from a dict (or a bare name); None when it has no usable name."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    return Topic(
        name=trim(name.strip(), MAX_NAME_CHARS),
        hierarchy=_hierarchy(value.get("hierarchy"), name),
        confidence=coerce_confidence(value.get("confidence", DEFAULT_CONFIDENCE)),
    )


def coerce_topics(value: object) -> list[Topic]:
    """The first seven usable topics."""
    if not isinstance(value, list):
        return []
    topics: list[Topic] = []
    for item in value:
        topic = coerce_topic(item)
        if topic is not None:
            topics.append(topic)
            if len(topics) >= MAX_TOPICS:
                break
    return topics


def coerce_entities(value: object) -> list[Entity]:
    """The first MAX_ENTITIES distinct `{type, name}` entities, each part cut at
    MAX_NAME_CHARS; nameless ones are dropped, a missing type is `other`."""
    if not isinstance(value, list):
        return []
    entities: dict[Entity, None] = {}  # insertion-ordered set
    for item in value:
        if len(entities) >= MAX_ENTITIES:
            break
        if not isinstance(item, dict):
            continue
        name = _string(item.get("name"))
        if not name:
            continue
        kind = _string(item.get("type")) or "other"
        entities[Entity(type=trim(kind, MAX_NAME_CHARS), name=trim(name, MAX_NAME_CHARS))] = None
    return list(entities)


def trim(text: str, limit: int) -> str:
    """Cut text to at most `limit` characters at a word boundary, marking the cut with `…`."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def _string(value: object) -> str:
    """A stripped string, or empty when the value is not a string."""
    return value.strip() if isinstance(value, str) else ""

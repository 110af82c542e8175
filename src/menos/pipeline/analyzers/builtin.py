"""The builtin analyzer: offline, deterministic summary, tags, topics and quality from the text."""

from __future__ import annotations

import asyncio
import collections
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import yake_rust

from menos.pipeline import analyzers, result

MODEL_NAME = "builtin"
# Up to this many characters (tens of ms of work) a text is analyzed on the event loop; a
# longer one in a thread, whose handoff would cost more than a short note's analysis.
INLINE_MAX_CHARS = 20_000
SUMMARY_MAX_CHARS = 600
MAX_TAGS = 10
MAX_VOCABULARY_TAGS = 5
MAX_TOPICS = 5
MAX_ENTITIES = 10
MIN_STRONG = 3  # fewer strong keyphrases than this and the weak ones are used too
# Keyword extraction costs about 1.4 ms per kilobyte and blocks the event loop; the opening of a
# long text carries its subject, and this bounds one extraction to roughly 15 ms.
KEYWORD_MAX_CHARS = 10_000
KEYPHRASES = 30
MATTR_WINDOW = 50
RUN_ON_WORDS = 60  # a "sentence" longer than this is an unpunctuated transcript: cut it up
CHUNK_WORDS = 30

# Score components and their maximum points; they add up to 100.
LENGTH_POINTS = 35
DIVERSITY_POINTS = 25
SENTENCE_POINTS = 20
STRUCTURE_POINTS = 20
LENGTH_FULL_WORDS = 1500
DIVERSITY_FLOOR = 0.4
DIVERSITY_CEILING = 0.8
DIVERSITY_FULL_WORDS = 100
SENTENCE_IDEAL = (12, 25)
TIER_BANDS = (("S", 85, 100), ("A", 70, 84), ("B", 50, 69), ("C", 30, 49), ("D", 1, 29))

_HEADING = re.compile(r"^[ ]{0,3}#{1,6}[ \t]+(?=\S)")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+(?=\S)")
_UNDERLINE = re.compile(r"[ ]{0,3}(?:=+|-+)[ \t]*")  # a setext heading's second line
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[^\sa-z])")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_ASCII_WORD = re.compile(r"[a-z0-9]+")
# A link's text holds no bracket and its target no unbalanced parenthesis: a scan that fails
# then stops at the next `[` or `(`, where the next try starts. With `[^\]]*` every `[` of a
# line without `]` scanned to its end: quadratic, in one C call that holds the GIL (300 KB of
# "[a " stopped the worker's heartbeats for two minutes, so its leases expired).
_MD_LINK = re.compile(r"!?\[([^\[\]]*)\]\([^()]*(?:\([^()]*\)[^()]*)*\)")
_MD_EMPHASIS = re.compile(r"[*_`]{1,3}")
_MID_SENTENCE_AFTER = frozenset("abcdefghijklmnopqrstuvwxyz0123456789,;:")
_WORD_JOINERS = frozenset("_'’-")  # a word followed by one of these goes on
_CAP_WORD = r"[A-Z][A-Za-z0-9'’&-]*"
_CONNECTOR = r"(?:of|the|de|la|le|van|von|der|du|and|for)"
_NAME = re.compile(
    rf"(?<![\w'’-]){_CAP_WORD}(?:[ \t]+(?:{_CONNECTOR}[ \t]+)?{_CAP_WORD})+(?![\w'’-])"
)
_ORGANIZATION_WORDS = frozenset(
    {
        "inc",
        "corp",
        "corporation",
        "ltd",
        "llc",
        "gmbh",
        "foundation",
        "university",
        "institute",
        "company",
        "group",
        "association",
        "society",
        "labs",
        "bank",
        "agency",
        "council",
        "ministry",
        "department",
        "committee",
        "college",
        "school",
    }
)
_PLACE_WORDS = frozenset(
    {
        "city",
        "county",
        "state",
        "states",
        "river",
        "lake",
        "mountain",
        "mountains",
        "island",
        "islands",
        "street",
        "park",
        "valley",
        "kingdom",
        "republic",
        "ocean",
        "sea",
    }
)


class Features(msgspec.Struct, frozen=True):
    """Measured figures of a text that the quality score is computed from."""

    words: int
    sentences: int
    paragraphs: int
    headings: int
    list_items: int
    diversity: float  # moving-average type-token ratio over MATTR_WINDOW words
    sentence_length: float  # mean words per sentence


class Keyphrase(msgspec.Struct, frozen=True):
    """A keyphrase, its yake score (lower is more relevant; inf when guessed) and word stems."""

    phrase: str
    score: float
    stems: tuple[str, ...]


class BuiltinAnalyzer:
    """Offline analyzer; one instance holds one keyword extractor and is safe to reuse."""

    name: str = "builtin"

    def __init__(self) -> None:
        self._extractor = yake_rust.Yake(language="en", ngrams=3, deduplication_threshold=0.9)
        self._stopwords: frozenset[str] = frozenset(
            word for word in self._extractor.stopwords if word
        )

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        """Analyze the text (CPU-bound, a few ms per kilobyte): a long one in a thread, so the
        worker's event loop goes on renewing leases; 5 MiB takes seconds. Not a daemon thread
        (pipeline.threads): yake-rust runs without the GIL, and one of its calls ending while
        the interpreter finalized aborted the process (`FATAL: exception not rethrown`), so a
        stopping worker waits those seconds for it instead."""
        if len(request.text) <= INLINE_MAX_CHARS:
            result = self.analyze_text(request)
        else:
            result = await asyncio.to_thread(self.analyze_text, request)
        return analyzers.Answer(text=msgspec.json.encode(result).decode(), model=MODEL_NAME)

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        """The builtin answer is always a JSON object, so repair just analyzes again."""
        return await self.analyze(request)

    def analyze_text(self, request: analyzers.Request) -> dict[str, Any]:
        """The result object (§5.4 fields without model and processed_at) for one request."""
        text = _setext_as_atx(request.text)
        units = _units(text)
        sentences = [unit for unit, heading in units if not heading]
        # Words of each sentence, lower-cased; the score and the summary both need them.
        sentence_words = [[word.lower() for word in _WORD.findall(s)] for s in sentences]
        tokens = [word.lower() for word in _WORD.findall(text)]
        features = _features(text, sentence_words, tokens)
        score, score_explanation, points = _quality(features)
        keyphrases = self._keyphrases(request.title, [unit for unit, _ in units])
        candidates = self._candidates(keyphrases, text, tokens)
        counts = self._content_counts(tokens)
        summary = self._summary(sentences, sentence_words, counts)
        if not summary:
            # A note of headings only ("# Shopping list") is summarized by its headings.
            headings = [unit for unit, heading in units if heading]
            heading_words = [[word.lower() for word in _WORD.findall(h)] for h in headings]
            summary = self._summary(headings, heading_words, counts)
        return {
            "summary": summary,
            "tags": self._tags(text, request.vocabulary, candidates),
            "tier": _tier(score),
            "tier_explanation": _tier_explanation(score, points),
            "quality_score": score,
            "score_explanation": score_explanation,
            "topics": _topics(candidates),
            "entities": _entities(text, self._stopwords),
        }

    def _keyphrases(self, title: str | None, units: Sequence[str]) -> list[tuple[str, float]]:
        """Yake keyphrases with their scores (lower is more relevant), best first."""
        # Every heading, list item and sentence ends with punctuation so that yake never joins
        # the last words of a heading to the first words of the next paragraph.
        lines = [title, *units] if title and title.strip() else list(units)
        source = "\n".join(
            line if line[-1] in ".!?" else line + "." for line in (u.strip() for u in lines) if line
        )[:KEYWORD_MAX_CHARS]
        if not source.strip():
            return []
        # yake-rust sums some statistics in hash-map order, so a score can differ in its last bits
        # from run to run; rounding keeps the rounded confidences of the topics identical.
        try:
            best = self._extractor.get_n_best(source, n=KEYPHRASES)
        except BaseException as exc:
            # yake-rust panics on some texts (a run of letters and apostrophes such as "a'a'a'…"
            # exceeds its tokenizer's backtrack limit), and pyo3 raises a panic as
            # PanicException, a BaseException no `except Exception` catches: the job's task
            # would die with its job left processing. Without keyphrases the top word is used.
            if type(exc).__name__ != "PanicException":
                raise
            return []
        return [(phrase, float(f"{score:.9g}")) for phrase, score in best if math.isfinite(score)]

    def _content_counts(self, tokens: Sequence[str]) -> collections.Counter[str]:
        """How often each content word occurs (stopwords and bare numbers left out)."""
        return collections.Counter(
            token
            for token in tokens
            if token not in self._stopwords and len(token) > 1 and not token.isdigit()
        )

    def _summary(
        self,
        sentences: Sequence[str],
        sentence_words: Sequence[Sequence[str]],
        counts: collections.Counter[str],
    ) -> str:
        """The 2 or 3 sentences whose content words are most frequent overall, in original order."""
        if not sentences:
            return ""
        top = max(counts.values(), default=1)
        scored: list[tuple[float, int]] = []
        for index, words in enumerate(sentence_words):
            content = [word for word in words if word in counts]
            if not content:
                scored.append((0.0, index))
                continue
            weight = sum(counts[word] / top for word in content) / len(content)
            weight *= min(1.0, len(words) / 8)  # fragments rarely summarize anything
            if index == 0:
                weight *= 1.15  # texts tend to open with their point
            scored.append((weight, index))
        wanted = 3 if len(sentences) >= 6 else min(2, len(sentences))
        ranked = sorted(scored, key=lambda item: (-item[0], item[1]))[:wanted]
        while len(ranked) > 1 and len(_join(sentences, ranked)) > SUMMARY_MAX_CHARS:
            ranked.pop()
        return result.trim(_join(sentences, ranked), SUMMARY_MAX_CHARS)

    def _tags(
        self, text: str, vocabulary: Sequence[str], candidates: Sequence[Keyphrase]
    ) -> list[str]:
        """The owner's tags found in the text (most frequent first), then keyphrase tags."""
        hits: list[tuple[int, int, str]] = []
        haystack = _stemmed_words(text) if vocabulary else ""
        for rank, entry in enumerate(vocabulary):
            tag = result.normalize_tag(entry)
            if tag is None or any(tag == hit[2] for hit in hits):
                continue
            needle = " " + " ".join(_stem(word) for word in tag.split("-")) + " "
            occurrences = haystack.count(needle)
            if occurrences:
                hits.append((-occurrences, rank, tag))
        tags = [tag for _, _, tag in sorted(hits)[:MAX_VOCABULARY_TAGS]]
        used = {_stem(word) for tag in tags for word in tag.split("-")}
        for candidate in candidates:
            if len(tags) >= MAX_TAGS:
                break
            tag = _phrase_tag(candidate.phrase)
            if tag is None or set(candidate.stems) & used:
                continue  # keeps tags distinct: no "locked" next to "skip-locked"
            tags.append(tag)
            used.update(candidate.stems)
        return tags

    def _candidates(
        self, keyphrases: Sequence[tuple[str, float]], text: str, tokens: Sequence[str]
    ) -> list[Keyphrase]:
        """Keyphrases that name a subject, best first, or the top word of a very short text.

        yake also proposes one-off fragments ("teams reach", "makes"), so a phrase is strong
        when it has no stopword inside and either recurs or is a name: capitalised throughout
        ("Apache Software Foundation"), or for one word, capitalised mid-sentence ("for Redis").
        Weak phrases are used only when there are fewer than three strong ones, and a phrase
        that is part of a longer strong one ("job" in "job queue") gives way to it.
        """
        haystack = " " + " ".join(tokens) + " "
        if not keyphrases:
            counts = self._content_counts(tokens) or collections.Counter(
                token for token in tokens if not token.isdigit()
            )
            keyphrases = [(word, math.inf) for word, _ in counts.most_common(1)]
        strong: list[Keyphrase] = []
        weak: list[Keyphrase] = []
        for phrase, score in keyphrases:
            words = [word.lower() for word in _WORD.findall(phrase)]
            if not words or (len(words) > 1 and any(word in self._stopwords for word in words)):
                continue
            candidate = Keyphrase(
                phrase=phrase, score=score, stems=tuple(_stem(word) for word in words)
            )
            if len(words) > 1:
                named = all(word[:1].isupper() or word[:1].isdigit() for word in phrase.split())
            else:
                named = phrase[:1].isupper() and _mid_sentence(phrase, text)
            recurs = haystack.count(" " + " ".join(words) + " ") >= 2
            (strong if named or recurs else weak).append(candidate)
        # A phrase gives way to a strong one that holds its stems as a contiguous run: stems have
        # no spaces, so that is a substring test on the stems joined and framed by spaces.
        longer = [(len(c.stems), " " + " ".join(c.stems) + " ") for c in strong]

        def stands(candidate: Keyphrase) -> bool:
            size, run = len(candidate.stems), " " + " ".join(candidate.stems) + " "
            return not any(size < other_size and run in other for other_size, other in longer)

        chosen = [candidate for candidate in strong if stands(candidate)]
        if len(chosen) < MIN_STRONG:
            chosen += [candidate for candidate in weak if stands(candidate)]
        return chosen


def _mid_sentence(word: str, text: str) -> bool:
    """Whether `word` occurs after a lower-case word or a comma, so not as a sentence start."""
    # Plain string search: a regex built from each word would be compiled anew for every text.
    start = text.find(word)
    while start != -1:
        before = start
        while before > 0 and text[before - 1].isspace():
            before -= 1
        after = text[start + len(word) : start + len(word) + 1]
        if (
            0 < before < start
            and text[before - 1] in _MID_SENTENCE_AFTER
            and not (after.isalnum() or after in _WORD_JOINERS)
        ):
            return True
        start = text.find(word, start + 1)
    return False


def _stemmed_words(text: str) -> str:
    """The text's ASCII words, lower-cased and stemmed, joined and framed by spaces."""
    words = [_stem(word) for word in _ASCII_WORD.findall(_ascii(text).lower())]
    return " " + " ".join(words) + " "


def _topics(candidates: Sequence[Keyphrase]) -> list[dict[str, Any]]:
    """Distinct top keyphrases as topics; confidence falls as the yake score rises."""
    topics: list[dict[str, Any]] = []
    used: set[str] = set()
    for candidate in candidates:
        if len(topics) >= MAX_TOPICS:
            break
        if used & set(candidate.stems):
            continue
        used.update(candidate.stems)
        name = candidate.phrase[:1].upper() + candidate.phrase[1:]
        # yake scores are unbounded and lower is better: 0.01 → 0.91, 0.1 → 0.5.
        score = candidate.score
        confidence = 0.3 if math.isinf(score) else round(1 / (1 + 10 * score), 2)
        topics.append({"name": name, "hierarchy": [name], "confidence": confidence})
    return topics


def _entities(text: str, stopwords: frozenset[str]) -> list[dict[str, str]]:
    """Capitalised multi-word names outside headings, most frequent first."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        if _HEADING.match(line):
            continue
        plain = _MD_EMPHASIS.sub("", _MD_LINK.sub(r"\1", _LIST_ITEM.sub("", line)))
        for match in _NAME.finditer(plain):
            words = match.group(0).split()
            while words and words[0].lower() in stopwords:
                words.pop(0)  # "The", "When" and friends open sentences, not names
            name = " ".join(words).rstrip("'’&-")
            # At least one word in mixed case: all-caps runs are SQL, shouting or acronyms.
            if len(words) >= 2 and any(not word.isupper() for word in words):
                found[name] = found.get(name, 0) + 1
    ranked = sorted(found.items(), key=lambda item: -item[1])[:MAX_ENTITIES]
    return [{"type": _entity_type(name), "name": name} for name, _ in ranked]


def _entity_type(name: str) -> str:
    """A coarse type from the words of a name."""
    words = {word.lower().strip(".,") for word in name.split()}
    if words & _ORGANIZATION_WORDS:
        return "organization"
    if words & _PLACE_WORDS:
        return "place"
    return "name"


def _setext_as_atx(text: str) -> str:
    """Text whose setext headings (a one-line paragraph underlined with `=` or `-`) are
    written as ATX headings (`# Title`), the form the measures below know: else the title
    and its underline were read as a sentence (a summary `Title === Body.`)."""
    lines: list[str] = []
    for line in text.split("\n"):
        above = lines[-1] if lines else ""
        if (
            _UNDERLINE.fullmatch(line)
            and above.strip()
            and not _HEADING.match(above)
            and not _LIST_ITEM.match(above)
            and not above.lstrip().startswith(">")
            and (len(lines) < 2 or not lines[-2].strip() or _HEADING.match(lines[-2]))
        ):
            lines[-1] = "# " + above.strip()
            continue
        lines.append(line)
    return "\n".join(lines)


def _units(text: str) -> list[tuple[str, bool]]:
    """Sentences, list items and headings of the text, markdown removed, each with is-heading."""
    units: list[tuple[str, bool]] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            units.extend((sentence, False) for sentence in _split_sentences(" ".join(paragraph)))
            paragraph.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif _HEADING.match(line):
            flush()
            units.extend((sentence, True) for sentence in _split_sentences(_HEADING.sub("", line)))
        elif _LIST_ITEM.match(line):
            flush()
            units.extend((item, False) for item in _split_sentences(_LIST_ITEM.sub("", line)))
        else:
            paragraph.append(line.strip())
    flush()
    return units


def _split_sentences(block: str) -> list[str]:
    """Split a paragraph into sentences; run-ons (transcripts) become fixed-size chunks."""
    block = " ".join(_MD_EMPHASIS.sub("", _MD_LINK.sub(r"\1", block)).split())
    sentences: list[str] = []
    for sentence in _SENTENCE_BREAK.split(block):
        words = sentence.split()
        if len(words) > RUN_ON_WORDS:
            sentences.extend(
                " ".join(words[start : start + CHUNK_WORDS])
                for start in range(0, len(words), CHUNK_WORDS)
            )
        elif _WORD.search(sentence):
            sentences.append(sentence)
    return sentences


def _features(
    text: str, sentence_words: Sequence[Sequence[str]], tokens: Sequence[str]
) -> Features:
    """Measure the text."""
    lines = text.splitlines()
    paragraphs = sum(
        1
        for index, line in enumerate(lines)
        if line.strip()
        and not _HEADING.match(line)
        and (index == 0 or not lines[index - 1].strip() or _HEADING.match(lines[index - 1]))
    )
    counted = [len(words) for words in sentence_words if words]
    return Features(
        words=len(tokens),
        sentences=len(counted),
        paragraphs=paragraphs,
        headings=sum(1 for line in lines if _HEADING.match(line)),
        list_items=sum(1 for line in lines if _LIST_ITEM.match(line)),
        diversity=_mattr(tokens, MATTR_WINDOW),
        sentence_length=sum(counted) / len(counted) if counted else 0.0,
    )


def _mattr(tokens: Sequence[str], window: int) -> float:
    """Moving-average type-token ratio: distinct words per window, averaged over all windows."""
    if not tokens:
        return 0.0
    if len(tokens) <= window:
        return len(set(tokens)) / len(tokens)
    # A plain dict holding only the words inside the window: its length is the distinct count.
    counts: dict[str, int] = {}
    for token in tokens[:window]:
        counts[token] = counts.get(token, 0) + 1
    total = len(counts)
    # The word leaving the window is `window` places behind the one entering it.
    for leaving, entering in zip(tokens, tokens[window:], strict=False):
        left = counts[leaving] - 1
        if left:
            counts[leaving] = left
        else:
            del counts[leaving]
        counts[entering] = counts.get(entering, 0) + 1
        total += len(counts)
    return total / (len(tokens) - window + 1) / window


def _quality(features: Features) -> tuple[int, list[str], dict[str, tuple[int, int]]]:
    """Score 1 to 100, its explanation and the points of each measure (name → (points, max))."""
    words = features.words
    length = round(LENGTH_POINTS * min(1.0, math.sqrt(words / LENGTH_FULL_WORDS)))
    # A ratio over a handful of words says little, so it counts fully from 100 words on.
    span = (features.diversity - DIVERSITY_FLOOR) / (DIVERSITY_CEILING - DIVERSITY_FLOOR)
    diversity = round(
        DIVERSITY_POINTS * max(0.0, min(1.0, span)) * min(1.0, words / DIVERSITY_FULL_WORDS)
    )
    low, high = SENTENCE_IDEAL
    mean = features.sentence_length
    if mean < low:
        fit = mean / low
    elif mean > high:
        fit = max(0.0, 1 - (mean - high) / high)
    else:
        fit = 1.0
    sentence = round(SENTENCE_POINTS * fit)
    structure = (
        (6 if features.headings else 0)
        + min(6, 3 * features.list_items)
        + min(8, 2 * max(0, features.paragraphs - 1))
    )
    score = max(1, min(100, length + diversity + sentence + structure))
    short = " (counts fully from 100 words)" if words < DIVERSITY_FULL_WORDS else ""
    explanation = [
        f"Length: {_count(words, 'word')} in {_count(features.sentences, 'sentence')} "
        f"→ {length}/{LENGTH_POINTS} points (full marks at {LENGTH_FULL_WORDS} words)",
        f"Lexical diversity: moving type-token ratio {features.diversity:.2f} over "
        f"{MATTR_WINDOW}-word windows → {diversity}/{DIVERSITY_POINTS} points{short}",
        f"Average sentence length: {mean:.1f} words ({low}–{high} reads best) "
        f"→ {sentence}/{SENTENCE_POINTS} points",
        f"Structure: {_count(features.headings, 'heading')}, "
        f"{_count(features.list_items, 'list item')}, {_count(features.paragraphs, 'paragraph')} "
        f"→ {structure}/{STRUCTURE_POINTS} points",
        f"Quality score: {score}/100",
    ]
    points = {
        "length": (length, LENGTH_POINTS),
        "lexical diversity": (diversity, DIVERSITY_POINTS),
        "sentence length": (sentence, SENTENCE_POINTS),
        "structure": (structure, STRUCTURE_POINTS),
    }
    return score, explanation, points


def _tier(score: int) -> str:
    """The tier whose band holds the score."""
    for tier, low, _ in TIER_BANDS:
        if score >= low:
            return tier
    return "D"


def _tier_explanation(score: int, points: dict[str, tuple[int, int]]) -> list[str]:
    """Why the tier: its band, the strongest and weakest measures."""
    tier = _tier(score)
    low, high = next((lo, hi) for name, lo, hi in TIER_BANDS if name == tier)
    ranked = sorted(points.items(), key=lambda item: item[1][0] / item[1][1])
    weakest, strongest = ranked[0], ranked[-1]
    return [
        f"Tier {tier}: quality score {score} is in the {tier} band ({low}–{high})",
        f"Strongest measure: {strongest[0]} ({strongest[1][0]}/{strongest[1][1]} points)",
        f"Weakest measure: {weakest[0]} ({weakest[1][0]}/{weakest[1][1]} points)",
        "Measured offline from text features; no language model was used",
    ]


def _phrase_tag(phrase: str) -> str | None:
    """A keyphrase as a tag (`Job Queues` → `job-queues`); None when no valid tag remains."""
    tag = "-".join(_ASCII_WORD.findall(_ascii(phrase).lower()))
    return result.normalize_tag(tag) if tag else None


def _ascii(text: str) -> str:
    """Text with accents removed (`café` → `cafe`) so tags stay within `[a-z0-9-]`."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _stem(word: str) -> str:
    """A crude plural-insensitive key for comparing words."""
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _join(sentences: Sequence[str], ranked: Iterable[tuple[float, int]]) -> str:
    """The chosen sentences in their original order."""
    return " ".join(sentences[index] for index in sorted(index for _, index in ranked))


def _count(number: int, noun: str) -> str:
    """`1 word`, `2 words`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"

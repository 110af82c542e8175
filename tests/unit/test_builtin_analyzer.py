"""The builtin analyzer: offline, deterministic results that the parse stage accepts."""

from __future__ import annotations

import asyncio
import datetime
import re
import subprocess
import sys
import time
from typing import Any

import msgspec
import pytest

from menos.pipeline import analyzers, result
from menos.pipeline.analyzers import builtin

ARTICLE = """# Why PostgreSQL makes a good job queue

Many teams reach for Redis or RabbitMQ the moment they need background jobs. Yet PostgreSQL \
already offers everything a durable job queue needs, and it keeps the jobs in the same database \
as the data they change.

The key feature is SELECT FOR UPDATE SKIP LOCKED. Each worker claims a batch of pending rows and \
locks them, while other workers simply skip the locked rows instead of waiting. Two workers never \
receive the same job, and no central broker decides who gets what.

Because a job row and the business data live in one database, a worker can finish its job and \
write its results in a single transaction. Either both commit or neither does. The outbox pattern \
builds on the same idea: the callback that announces the result is inserted in the same \
transaction as the state change.

- Claims are one statement with a lease.
- Leases expire when a worker dies, and a rescuer returns the job.

Martin Kleppmann describes these trade-offs in Designing Data-Intensive Applications, and the \
Apache Software Foundation hosts several brokers that solve the same problem differently.
"""

TAG = re.compile(r"^[a-z][a-z0-9-]*$")


def request(text: str, *, vocabulary: list[str] | None = None) -> analyzers.Request:
    return analyzers.Request(
        text=text,
        title=None,
        content_type="markdown",
        tags=[],
        vocabulary=vocabulary or [],
    )


async def analyze(text: str, *, vocabulary: list[str] | None = None) -> dict[str, Any]:
    answer = await builtin.BuiltinAnalyzer().analyze(request(text, vocabulary=vocabulary))
    assert answer.model == "builtin"
    decoded: dict[str, Any] = msgspec.json.decode(answer.text)
    return decoded


def sentences_of(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


async def test_article_answer_is_accepted_by_the_parse_stage() -> None:
    """A builtin answer parses and coerces with every field filled, named model "builtin"."""
    answer = await builtin.BuiltinAnalyzer().analyze(request(ARTICLE))
    raw = result.extract_json(answer.text)
    assert raw is not None
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    got = result.coerce(raw, known_tags=(), model=answer.model, processed_at=now)
    assert got.model == "builtin"
    assert got.summary and got.tags and got.topics and got.entities
    assert got.tier_explanation and got.score_explanation


async def test_article_summary_is_extracted_sentences_in_order() -> None:
    """The summary is 2 or 3 sentences copied from the article, in the article's order."""
    summary = (await analyze(ARTICLE))["summary"]
    assert 0 < len(summary) <= 600
    picked = sentences_of(summary)
    assert 2 <= len(picked) <= 3
    flat = " ".join(ARTICLE.split())
    positions = [flat.index(sentence) for sentence in picked]
    assert positions == sorted(positions)


async def test_article_tags_are_valid_and_few() -> None:
    """Tags are lower-case hyphenated words matching the tag rule, at most ten, no repeats."""
    tags = (await analyze(ARTICLE))["tags"]
    assert 0 < len(tags) <= 10
    assert len(set(tags)) == len(tags)
    assert all(TAG.match(tag) for tag in tags), tags
    assert "postgresql" in tags


async def test_owner_vocabulary_is_preferred_when_present() -> None:
    """The owner's tags whose words occur in the text come first; absent ones are not used."""
    vocabulary = ["cooking", "transactions", "databases", "gardening"]
    tags = (await analyze(ARTICLE, vocabulary=vocabulary))["tags"]
    assert set(tags[:2]) == {"transactions", "databases"}
    assert "cooking" not in tags
    assert "gardening" not in tags


async def test_topics_are_distinct_keyphrases_with_confidence() -> None:
    """Topics name the article's subjects once each, with a confidence between 0 and 1."""
    topics = (await analyze(ARTICLE))["topics"]
    assert 0 < len(topics) <= 7
    names = [topic["name"].lower() for topic in topics]
    assert "job queue" in names
    assert "job" not in names  # a fragment of "job queue" is not a topic of its own
    for topic in topics:
        assert topic["hierarchy"] == [topic["name"]]
        assert 0 < topic["confidence"] <= 1


async def test_one_off_fragments_are_not_tags() -> None:
    """Verb fragments that yake proposes once ("makes", "teams reach") do not become tags."""
    tags = (await analyze(ARTICLE))["tags"]
    assert "job-queue" in tags
    assert not {"makes", "good", "teams-reach", "postgresql-makes"} & set(tags)


async def test_entities_are_capitalised_names() -> None:
    """Multi-word proper names in the text are reported as entities; headings are not."""
    entities = (await analyze(ARTICLE))["entities"]
    names = [entity["name"] for entity in entities]
    assert "Martin Kleppmann" in names
    assert {"type": "organization", "name": "Apache Software Foundation"} in entities
    assert not any("Why" in name for name in names)


async def test_score_and_tier_agree_and_explain_the_figures() -> None:
    """The tier matches the score band and the explanations state the measured figures."""
    got = await analyze(ARTICLE)
    score = got["quality_score"]
    assert 1 <= score <= 100
    band = {"S": (85, 100), "A": (70, 84), "B": (50, 69), "C": (30, 49), "D": (1, 29)}
    low, high = band[got["tier"]]
    assert low <= score <= high
    words = len(re.findall(r"[^\W_]+(?:['’][^\W_]+)*", ARTICLE))
    explained = " ".join(got["score_explanation"])
    assert f"{words} words" in explained
    assert "1 heading" in explained and "2 list items" in explained
    assert f"quality score {score}" in " ".join(got["tier_explanation"])


async def test_an_underlined_heading_is_a_heading() -> None:
    """A setext heading (a line underlined with `===` or `---`) counts as a heading and is
    not summarized as a sentence with its underline."""
    got = await analyze("Setext title\n===\n\nBody.")
    assert got["summary"] == "Body."
    assert "1 heading" in " ".join(got["score_explanation"])
    got = await analyze("We plan the release.\n\nFirst part\n----------\n\nWe ship on Friday.")
    assert got["summary"] == "We plan the release. We ship on Friday."
    assert "1 heading" in " ".join(got["score_explanation"])


async def test_a_note_of_headings_only_is_summarized_by_them() -> None:
    """A note that is only a heading ("# Shopping list") got an empty summary."""
    assert (await analyze("# Shopping list"))["summary"] == "Shopping list"
    assert (await analyze("# Plans\n\n## Next week"))["summary"].startswith("Plans")


async def test_structured_article_outranks_a_short_note() -> None:
    """A longer, structured article gets a higher quality score than a one-line note."""
    article = await analyze(ARTICLE)
    note = await analyze("Buy milk tomorrow and call Anna Smith.")
    assert article["quality_score"] > note["quality_score"]


async def test_output_is_deterministic() -> None:
    """Analyzing the same text twice, even with fresh analyzers, gives the identical answer."""
    first = await builtin.BuiltinAnalyzer().analyze(request(ARTICLE, vocabulary=["databases"]))
    again = builtin.BuiltinAnalyzer()
    second = await again.analyze(request(ARTICLE, vocabulary=["databases"]))
    third = await again.analyze(request(ARTICLE, vocabulary=["databases"]))
    assert first.text == second.text == third.text


async def test_repair_returns_the_same_answer() -> None:
    """The repair call of the builtin analyzer gives the same answer as the first call."""
    analyzer = builtin.BuiltinAnalyzer()
    first = await analyzer.analyze(request(ARTICLE))
    assert await analyzer.repair(request(ARTICLE), first) == first


async def test_short_note_is_processed() -> None:
    """A one-line note is summarized by itself and tagged with valid tags."""
    got = await analyze("Buy milk tomorrow and call Anna Smith.")
    assert got["summary"] == "Buy milk tomorrow and call Anna Smith."
    assert got["tags"] and all(TAG.match(tag) for tag in got["tags"])
    assert {"type": "name", "name": "Anna Smith"} in got["entities"]


@pytest.mark.parametrize("text", ["hello", "PostgreSQL", "42"])
async def test_single_word_is_processed(text: str) -> None:
    """A one-word text gets a result with a low tier instead of an error."""
    got = await analyze(text)
    assert got["summary"] == text
    assert got["tier"] == "D"
    assert all(TAG.match(tag) for tag in got["tags"])


async def test_one_word_becomes_a_tag() -> None:
    """Even a single (stop)word yields a tag, so short notes are still findable by tag."""
    assert (await analyze("hello"))["tags"] == ["hello"]


@pytest.mark.parametrize("text", ["", "   \n\t  ", "\n\n# \n- \n", "!!! ?"])
async def test_empty_text_does_not_raise(text: str) -> None:
    """Blank text gives an empty summary, no tags and the lowest tier rather than a crash."""
    got = await analyze(text)
    assert got["summary"] == ""
    assert got["tags"] == []
    assert got["tier"] == "D"
    assert got["quality_score"] >= 1


async def test_unpunctuated_transcript_summary_stays_short() -> None:
    """A transcript without punctuation still gets a summary of at most 600 characters."""
    transcript = " ".join(["so today we talk about postgres queues and workers"] * 80)
    got = await analyze(transcript)
    assert 0 < len(got["summary"]) <= 600


async def test_long_sentences_are_trimmed_to_600_characters() -> None:
    """Very long sentences are cut at a word boundary with an ellipsis to fit 600 characters."""
    sentence = "Transactional " + "notifications synchronously acknowledge " * 15 + "deliveries."
    text = " ".join([sentence] * 4)
    summary = (await analyze(text))["summary"]
    assert len(summary) <= 600
    assert summary.endswith("…")


async def test_accented_text_gives_ascii_tags() -> None:
    """Words with accents become plain ASCII tags that match the tag rule."""
    text = "Le café crème est servi à Montréal. Les cafés de Montréal servent du café crème."
    tags = (await analyze(text))["tags"]
    assert tags
    assert all(TAG.match(tag) for tag in tags), tags


async def test_a_long_text_is_analyzed_while_the_event_loop_runs() -> None:
    """Analyzing megabytes takes seconds: the worker's loop must go on meanwhile (heartbeats
    renew its leases), so a long text is analyzed off the loop, with the same answer."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    long_text = ARTICLE * (builtin.INLINE_MAX_CHARS // len(ARTICLE) + 1)
    try:
        before = ticks
        threaded = await analyze(long_text)
        assert ticks > before
    finally:
        ticker.cancel()
    assert threaded == builtin.BuiltinAnalyzer().analyze_text(request(long_text))


@pytest.mark.parametrize(
    "text", ["a'" * 1_000, "It's " + "ab'" * 1_000 + " the end.", "é'" * 1_000]
)
async def test_a_text_the_keyword_extractor_panics_on_is_still_analyzed(text: str) -> None:
    """yake-rust panics on a long run of letters and apostrophes (pyo3's PanicException, a
    BaseException): the analysis still answers, without keyphrases."""
    got = await analyze(text)
    assert got["summary"] and got["tier"] in result.TIERS
    assert all(TAG.match(tag) for tag in got["tags"])


@pytest.mark.parametrize("text", ["[a " * 30_000, "![" * 30_000, "[](" * 30_000])
def test_brackets_without_links_are_analyzed_in_linear_time(text: str) -> None:
    """Unclosed `[` made link removal quadratic, in one regex call holding the GIL: 90 KB of
    "[a " took 17 s, 300 KB two minutes in which the worker renewed no lease."""
    started = time.process_time()
    got = builtin.BuiltinAnalyzer().analyze_text(request(text))
    assert got["quality_score"] >= 1
    assert time.process_time() - started < 5


def test_links_become_their_text() -> None:
    """Links and images read as their text; a target may hold one level of parentheses."""
    got = builtin.BuiltinAnalyzer().analyze_text(
        request("See [the docs](https://e.com/Foo_(bar)) and ![a diagram](d.png) here.")
    )
    assert got["summary"] == "See the docs and a diagram here."


_STOPPED_DURING_ANALYSES = """
import asyncio, random, sys
from menos.pipeline import analyzers
from menos.pipeline.analyzers import builtin

random.seed(int(sys.argv[1]))
WORDS = ["".join(random.choices("abcdefghijklmnop", k=random.randint(3, 9))) for _ in range(3000)]
TEXT = " ".join(" ".join(random.choices(WORDS, k=12)) + "." for _ in range(300))
analyzer = builtin.BuiltinAnalyzer()

async def slot():
    request = analyzers.Request(
        text=TEXT, title="t", content_type="markdown", tags=[], vocabulary=[]
    )
    while True:  # a busy worker's slot: one long analysis after another
        await analyzer.analyze(request)

async def main():
    slots = [asyncio.create_task(slot()) for _ in range(4)]
    await asyncio.sleep(0.3)
    for task in slots:  # a stop gives the jobs back: their analyses are abandoned
        task.cancel()
    await asyncio.gather(*slots, return_exceptions=True)

asyncio.run(main())
print("stopped", flush=True)
"""


@pytest.mark.parametrize("seed", range(3))
def test_a_process_stopped_during_long_analyses_exits_cleanly(seed: int) -> None:
    """yake-rust runs without the GIL: in a daemon thread, a call that ended while the
    interpreter finalized aborted the process (SIGABRT, `FATAL: exception not rethrown`)."""
    done = subprocess.run(
        [sys.executable, "-c", _STOPPED_DURING_ANALYSES, str(seed)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr[-2000:]

"""Parse stage: JSON extraction from model answers and coercion into the stored result."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest

from menos import errors
from menos.pipeline import result

NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def coerce(raw: dict[str, Any], known: tuple[str, ...] = ()) -> result.Result:
    return result.coerce(raw, known_tags=known, model="m", processed_at=NOW)


# extract_json


def test_plain_json_object_is_read() -> None:
    """A bare JSON answer is used as is."""
    assert result.extract_json('{"summary": "s", "tier": "A"}') == {"summary": "s", "tier": "A"}


def test_fenced_json_is_read() -> None:
    """An answer wrapped in a ```json fence with prose around it is still parsed."""
    text = 'Here you go:\n```json\n{"summary": "fenced", "tags": ["a"]}\n```\nHope it helps!'
    assert result.extract_json(text) == {"summary": "fenced", "tags": ["a"]}


def test_fence_on_one_line_is_read() -> None:
    """A fence opened and closed on the same line as the object does not hide it."""
    assert result.extract_json('```json {"tier": "B"} ```') == {"tier": "B"}


def test_an_object_nested_too_deeply_is_no_answer() -> None:
    """100,000 nested objects read as no JSON object (a repair call follows), not a crash."""
    depth = 100_000
    assert result.extract_json('{"a":' * depth + "1" + "}" * depth) is None


def test_an_object_after_one_nested_too_deeply_is_found() -> None:
    """The too-deep value is skipped whole (brackets and escaped quotes inside its strings
    included), and the search goes on after it."""
    deep = '{"x": "]}\\"{", "y": ' + "[" * 5000 + "]" * 5000 + "}"
    assert result.extract_json(deep + ' then {"summary": "ok"}') == {"summary": "ok"}
    assert result.extract_json(deep[:-1]) is None  # never closed


def test_an_object_after_prose_with_many_braces_is_found() -> None:
    """A model that quotes code before its JSON: 70 braces the decoder refuses at once do not
    use up the search, which found no object and ended the job EMPTY_RESPONSE."""
    prose = "The note's code: " + "f(x) { return x; } " * 70
    assert result.extract_json(prose + '\n{"summary": "ok"}') == {"summary": "ok"}


def test_an_answer_of_open_objects_over_a_long_tail_is_read_a_few_times_only() -> None:
    """900 objects opened over an array that never closes: each start read to the end (84 s
    on the worker's event loop for 2 MB, when every start was tried; a minute for 8 MiB at
    64 starts, twice with the repair call); the search stops once it has read the answer a
    few times over."""
    text = '{"a":' * 900 + "[" + "1," * 2**20
    searched: list[int] = []
    real = result.json.JSONDecoder.raw_decode

    def counting(self: Any, s: str, idx: int = 0) -> Any:
        searched.append(idx)
        return real(self, s, idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(result.json.JSONDecoder, "raw_decode", counting)
        assert result.extract_json(text) is None
    assert len(searched) <= result.SEARCH_PASSES + 1


def test_an_integer_too_long_for_python_is_a_value_of_the_wrong_type() -> None:
    """A 5,000-digit quality_score is past what Python converts: the object still reads, with
    that value as text (the wrong type, so the field takes its default)."""
    answer = result.extract_json('{"summary": "s", "quality_score": ' + "1" * 5000 + "}")
    assert answer is not None and answer["summary"] == "s"
    assert isinstance(answer["quality_score"], str)


def test_think_block_is_skipped() -> None:
    """Reasoning in <think> with its own braces is ignored; the real answer after it is used."""
    text = '<think>Maybe {"summary": "draft"} is right?</think>\n{"summary": "final"}'
    assert result.extract_json(text) == {"summary": "final"}


def test_a_thinking_block_is_skipped_as_a_think_block_is() -> None:
    """Models that reason in <thinking> had their draft inside it stored as the result."""
    text = '<thinking>Maybe {"summary": "draft"}?</thinking>\n{"summary": "final"}'
    assert result.extract_json(text) == {"summary": "final"}
    assert result.extract_json('</thinking>{"summary": "after a template\'s tag"}') == {
        "summary": "after a template's tag"
    }


def test_several_think_blocks_around_the_answer_are_removed() -> None:
    """Interleaved reasoning blocks, even after the answer, leave the answer intact."""
    text = '<THINK>plan {"tier": "D"}</THINK>{"tier": "A"}\n<think>check</think>'
    assert result.extract_json(text) == {"tier": "A"}


def test_orphan_closing_think_tag_drops_the_reasoning_before_it() -> None:
    """When the template opened <think>, reasoning before </think> is never taken as the answer."""
    text = 'thinking {"summary": "draft"} done</think>{"summary": "final"}'
    assert result.extract_json(text) == {"summary": "final"}


def test_a_closing_think_tag_inside_the_answer_leaves_the_answer() -> None:
    """A summary of an article on reasoning models may quote `</think>`: the answer after the
    template's own closing tag is read whole (only the text after the quoted tag was)."""
    text = 'thinking done</think>{"summary": "R1 ends its reasoning with </think> first."}'
    assert result.extract_json(text) == {"summary": "R1 ends its reasoning with </think> first."}
    quoted_alone = '```json\n{"summary": "R1 ends its reasoning with </think> first."}\n```'
    assert result.extract_json(quoted_alone) == {
        "summary": "R1 ends its reasoning with </think> first."
    }
    # a draft in the reasoning is still never the answer
    assert result.extract_json('draft {"summary": "x"} done</think> no JSON here') is None
    assert result.extract_json('done</think> <think>{"summary": "cut off"}') is None
    assert result.extract_json("{}") == {}  # an empty object is found, as any other


@pytest.mark.parametrize("tag", ["<think>", "<think"])
def test_many_unclosed_think_tags_do_not_stall_the_parse(tag: str) -> None:
    """An answer of 300,000 `<think>` that never close (2 MB, far below the 8 MiB an answer
    may be) is read at once: each one retried up to the end held the worker for hours."""
    assert result.extract_json('{"summary": "ok"}' + tag * 300_000) == {"summary": "ok"}


def test_unclosed_leading_think_yields_nothing() -> None:
    """A model cut off mid-reasoning gives no object, so the repair call is made."""
    assert result.extract_json('<think>I should answer {"summary": "draft"} but') is None


def test_braces_inside_strings_do_not_end_the_object() -> None:
    """A summary that contains braces and quotes is kept whole."""
    text = 'x {"summary": "use {braces} and \\"}\\" freely", "tier": "S"} y'
    assert result.extract_json(text) == {"summary": 'use {braces} and "}" freely', "tier": "S"}


def test_first_object_that_parses_wins() -> None:
    """Stray braces before the answer are skipped and the first valid object is used."""
    text = 'set {x | x > 0} then {"tier": "A"} and {"tier": "D"}'
    assert result.extract_json(text) == {"tier": "A"}


def test_fence_marker_inside_a_string_survives() -> None:
    """Backticks inside a JSON string are not mistaken for a fence."""
    text = '{"summary": "run ```ls``` first"}'
    assert result.extract_json(text) == {"summary": "run ```ls``` first"}


@pytest.mark.parametrize("text", ["", "no json here", "[1, 2, 3]", "{not json}", "{"])
def test_no_json_object_gives_none(text: str) -> None:
    """Answers without a JSON object report None so the parse stage can ask for a repair."""
    assert result.extract_json(text) is None


# coerce: required fields


def test_object_without_result_fields_is_parse_failed() -> None:
    """A JSON object unrelated to the result fails the job with PARSE_FAILED."""
    with pytest.raises(errors.PipelineError) as caught:
        coerce({"answer": "hello", "ok": True})
    assert caught.value.code == "PARSE_FAILED"


def test_empty_object_is_parse_failed() -> None:
    """An empty object fails with PARSE_FAILED rather than storing an empty result."""
    with pytest.raises(errors.PipelineError) as caught:
        coerce({})
    assert caught.value.code == "PARSE_FAILED"


def test_one_field_is_enough_and_the_rest_take_defaults() -> None:
    """A partial answer is stored with defaults for the missing fields."""
    got = coerce({"summary": "  Short.  "})
    assert got == result.Result(
        summary="Short.",
        tags=[],
        new_tags=[],
        tier="C",
        tier_explanation=[],
        quality_score=50,
        score_explanation=[],
        topics=[],
        entities=[],
        model="m",
        processed_at=NOW,
    )


def test_result_serializes_to_the_documented_shape() -> None:
    """The stored JSON has exactly the §5.4 keys, including model and processed_at."""
    encoded = msgspec.json.decode(msgspec.json.encode(coerce({"tier": "a"})))
    assert set(encoded) == {
        "summary",
        "tags",
        "new_tags",
        "tier",
        "tier_explanation",
        "quality_score",
        "score_explanation",
        "topics",
        "entities",
        "model",
        "processed_at",
    }
    assert encoded["processed_at"] == "2024-05-01T12:00:00Z"


# coerce: tier and score


@pytest.mark.parametrize(
    ("given", "expected"),
    [("a", "A"), (" s ", "S"), ("D", "D"), ("E", "C"), ("A+", "C"), (3, "C"), (None, "C")],
)
def test_tier_is_upper_cased_or_defaults_to_c(given: object, expected: str) -> None:
    """Tiers are one of S A B C D; anything else is stored as C."""
    assert coerce({"tier": given}).tier == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (72, 72),
        (0, 1),
        (-5, 1),
        (250, 100),
        (72.6, 73),
        ("88", 88),
        (" 41.2 ", 41),
        ("high", 50),
        (None, 50),
        (True, 50),
        ([80], 50),
        (float("nan"), 50),
        ("inf", 50),
        pytest.param(10**400, 50, id="1e400-int"),  # JSON allows an integer no float holds
    ],
)
def test_quality_score_is_an_integer_in_range(given: object, expected: int) -> None:
    """Scores are whole numbers from 1 to 100; unreadable ones are stored as 50."""
    got = coerce({"quality_score": given}).quality_score
    assert got == expected
    assert type(got) is int


# coerce: tags


def test_tags_are_normalized() -> None:
    """Tags are lower-cased with spaces and underscores turned into hyphens."""
    got = coerce({"tags": ["Machine Learning", "job_queue", "  PostgreSQL "]}, known=("x",))
    assert got.tags == ["machine-learning", "job-queue", "postgresql"]


def test_invalid_tags_are_dropped() -> None:
    """Tags that do not match ^[a-z][a-z0-9-]*$ after normalizing are left out."""
    got = coerce({"tags": ["3d-printing", "#python", "c++", "", "ok-1", 7, None, "naïve"]})
    assert got.tags == ["ok-1"]


def test_tags_longer_than_a_hundred_characters_are_dropped() -> None:
    """A tag too long for the tag index is left out instead of failing the job at persist."""
    longest, too_long = "a" * result.MAX_TAG_CHARS, "b" * (result.MAX_TAG_CHARS + 1)
    assert result.MAX_TAG_CHARS == 100
    assert coerce({"tags": [too_long, longest, "x" * 4000, "ok"]}).tags == [longest, "ok"]


def test_duplicate_tags_are_removed() -> None:
    """The same tag written two ways is stored once."""
    assert coerce({"tags": ["Job Queue", "job_queue", "job-queue"]}).tags == ["job-queue"]


def test_at_most_ten_tags() -> None:
    """Only the first ten valid tags are stored."""
    known = tuple(f"t{i}" for i in range(20))
    assert coerce({"tags": list(known)}, known=known).tags == list(known[:10])


def test_at_most_three_new_tags_and_known_ones_are_kept() -> None:
    """New tags beyond three are dropped while tags the owner already uses are all kept."""
    given = ["n1", "k1", "n2", "n3", "n4", "k2", "n5", "k3"]
    got = coerce({"tags": given}, known=("k1", "k2", "k3"))
    assert got.tags == ["n1", "k1", "n2", "n3", "k2", "k3"]
    assert got.new_tags == ["n1", "n2", "n3"]


def test_new_tags_lists_only_tags_the_owner_never_used() -> None:
    """new_tags is the stored tags minus the owner's known tags, in order."""
    got = coerce({"tags": ["python", "Rust"]}, known=("python",))
    assert got.new_tags == ["rust"]


def test_tags_of_the_wrong_type_default_to_empty() -> None:
    """A tags string instead of a list is ignored rather than failing the job."""
    assert coerce({"tags": "python, rust", "summary": "s"}).tags == []


# coerce: explanations


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Well sourced.", ["Well sourced."]),
        (["One.", " Two. ", "", 3, None], ["One.", "Two."]),
        ("   ", []),
        ({"why": "x"}, []),
        (None, []),
    ],
)
def test_explanations_become_lists_of_strings(given: object, expected: list[str]) -> None:
    """An explanation given as a string or a list is stored as a list of non-blank strings."""
    got = coerce({"tier_explanation": given, "score_explanation": given})
    assert got.tier_explanation == expected
    assert got.score_explanation == expected


# coerce: topics


def test_topic_with_list_hierarchy_and_numeric_confidence() -> None:
    """A fully specified topic is stored as given."""
    raw = {
        "topics": [
            {"name": "PostgreSQL", "hierarchy": ["Databases", "PostgreSQL"], "confidence": 0.8}
        ]
    }
    assert coerce(raw).topics == [
        result.Topic(name="PostgreSQL", hierarchy=["Databases", "PostgreSQL"], confidence=0.8)
    ]


def test_topic_hierarchy_string_is_split_on_arrow() -> None:
    """A hierarchy written as "a > b" becomes a list."""
    raw = {"topics": [{"name": "Queues", "hierarchy": "Computing > Databases >  Queues "}]}
    assert coerce(raw).topics[0].hierarchy == ["Computing", "Databases", "Queues"]


def test_topic_without_hierarchy_splits_the_name() -> None:
    """A topic without hierarchy gets one from its name split on ">"."""
    raw = {"topics": [{"name": "Science > Physics"}, {"name": "Cooking", "hierarchy": 5}]}
    got = coerce(raw).topics
    assert [topic.hierarchy for topic in got] == [["Science", "Physics"], ["Cooking"]]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("high", 0.9),
        ("Medium", 0.7),
        ("low", 0.5),
        (0.42, 0.42),
        (1, 1.0),
        (7, 1.0),
        (-0.3, 0.0),
        ("0.6", 0.6),
        ("very", 0.5),
        (None, 0.5),
        (True, 0.5),
        pytest.param(10**400, 0.5, id="1e400-int"),
    ],
)
def test_topic_confidence_is_a_number_between_0_and_1(given: object, expected: float) -> None:
    """Confidence words map to 0.9/0.7/0.5, numbers are clamped, anything else is 0.5."""
    got = coerce({"topics": [{"name": "T", "confidence": given}]}).topics[0].confidence
    assert got == pytest.approx(expected)


def test_a_huge_integer_in_the_answer_takes_the_default() -> None:
    """`1` followed by 400 zeros as a score or confidence does not fail the parse stage."""
    huge = "1" + "0" * 400
    raw = result.extract_json(
        f'{{"quality_score": {huge}, "topics": [{{"name": "T", "confidence": {huge}}}]}}'
    )
    assert raw is not None
    got = coerce(raw)
    assert (got.quality_score, got.topics[0].confidence) == (50, 0.5)


def test_topic_confidence_missing_is_half() -> None:
    """A topic without confidence is stored with 0.5."""
    assert coerce({"topics": [{"name": "T"}]}).topics[0].confidence == 0.5


def test_at_most_seven_topics_and_unusable_ones_skipped() -> None:
    """Nameless or malformed topics are skipped and at most seven are stored."""
    raw: list[object] = [{"name": ""}, 3, {"hierarchy": ["x"]}]
    raw += [{"name": f"T{i}"} for i in range(10)]
    got = coerce({"topics": raw}).topics
    assert [topic.name for topic in got] == [f"T{i}" for i in range(7)]


def test_topics_of_the_wrong_type_default_to_empty() -> None:
    """A topics object instead of a list is ignored rather than failing the job."""
    assert coerce({"topics": {"name": "x"}}).topics == []


# coerce: entities


def test_entities_are_type_and_name_pairs() -> None:
    """Entities keep their type and name; nameless and malformed ones are dropped."""
    raw = {
        "entities": [
            {"type": "person", "name": "Ada Lovelace"},
            {"type": "person", "name": "Ada Lovelace"},
            {"name": "Acme"},
            {"type": "org"},
            "Bob",
            {"type": 3, "name": ["x"]},
        ]
    }
    assert coerce(raw).entities == [
        result.Entity(type="person", name="Ada Lovelace"),
        result.Entity(type="other", name="Acme"),
    ]


def test_entities_of_the_wrong_type_default_to_empty() -> None:
    """An entities string is ignored rather than failing the job."""
    assert coerce({"entities": "Ada Lovelace"}).entities == []


def test_summary_of_the_wrong_type_defaults_to_empty() -> None:
    """A non-string summary is stored as an empty string."""
    assert coerce({"summary": ["a", "b"], "tier": "B"}).summary == ""


def test_lone_surrogates_and_nul_in_the_answer_become_replacement_characters() -> None:
    """Strings PostgreSQL cannot store (JSON's "\\ud800", "\\u0000") do not fail the job."""
    raw = result.extract_json(
        '{"summary": "lone \\ud800 here", "tier_explanation": ["a\\u0000b"],'
        ' "topics": [{"name": "x\\udc00", "hierarchy": ["h\\ud800"]}],'
        ' "entities": [{"type": "t\\u0000", "name": "n\\udfff"}]}'
    )
    assert raw is not None
    got = result.coerce(raw, known_tags=(), model="m\ud800", processed_at=NOW)
    assert got.summary == "lone \ufffd here"
    assert got.tier_explanation == ["a\ufffdb"]
    assert got.topics[0].name == "x\ufffd" and got.topics[0].hierarchy == ["h\ufffd"]
    assert got.entities == [result.Entity(type="t\ufffd", name="n\ufffd")]
    assert got.model == "m\ufffd"
    assert got.processed_at == NOW
    encoded = msgspec.json.encode(got)  # what storage does: lone surrogates are refused
    assert b"\\u0000" not in encoded


# coerce: bounds of the free-text fields


def test_a_long_summary_is_cut_at_a_word_boundary_and_marked() -> None:
    """A model's megabyte summary is stored cut, not whole (it also goes in every callback)."""
    got = coerce({"summary": "word " * 1_000_000}).summary
    assert len(got) <= result.MAX_SUMMARY_CHARS
    assert got.endswith("word…")


def test_explanations_are_bounded_in_count_and_length() -> None:
    """At most MAX_EXPLANATIONS lines, each cut at MAX_EXPLANATION_CHARS."""
    got = coerce({"tier_explanation": ["x" * 5_000] * 1_000}).tier_explanation
    assert len(got) == result.MAX_EXPLANATIONS
    assert all(len(line) == result.MAX_EXPLANATION_CHARS for line in got)
    assert coerce({"score_explanation": "y" * 5_000}).score_explanation == [
        "y" * (result.MAX_EXPLANATION_CHARS - 1) + "…"
    ]


def test_topic_names_and_hierarchies_are_bounded() -> None:
    """A topic's name and each level are cut at MAX_NAME_CHARS; at most MAX_HIERARCHY levels."""
    topic = coerce(
        {"topics": [{"name": "n" * 1_000, "hierarchy": [" > ".join(["h" * 300] * 1_000)]}]}
    ).topics[0]
    assert len(topic.name) == result.MAX_NAME_CHARS
    assert len(topic.hierarchy) == result.MAX_HIERARCHY
    assert all(len(level) == result.MAX_NAME_CHARS for level in topic.hierarchy)
    unsplit = coerce({"topics": [" > ".join(f"l{i}" for i in range(100))]}).topics[0]
    assert unsplit.hierarchy == [f"l{i}" for i in range(result.MAX_HIERARCHY)]


def test_entities_are_bounded() -> None:
    """At most MAX_ENTITIES distinct entities, each part cut at MAX_NAME_CHARS."""
    raw = [{"type": "t", "name": "same"}] * 3 + [
        {"type": "k" * 500, "name": f"{i} " + "n" * 500} for i in range(100)
    ]
    got = coerce({"entities": raw}).entities
    assert len(got) == result.MAX_ENTITIES
    assert got[0] == result.Entity(type="t", name="same")
    assert all(len(e.type) <= result.MAX_NAME_CHARS >= len(e.name) for e in got)
    assert got[1] == result.Entity(type="k" * (result.MAX_NAME_CHARS - 1) + "…", name="0…")

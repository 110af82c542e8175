"""A run through the parse stage: tags asked about and kept, unreadable answers, empty text."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import msgspec
import pytest

from menos import errors
from menos.pipeline import analyzers, stages
from menos.pipeline.analyzers import builtin, openai
from tests.support.pipeline import QuietPort, offline_context

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class FixedAnalyzer:
    """Answers every request with the same JSON object."""

    name = "fixed"

    def __init__(self, answer: dict[str, Any]) -> None:
        self.text = json.dumps(answer)

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        return analyzers.Answer(text=self.text, model="fixed")

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        return first


class RecordingPort(QuietPort):
    """A worker stand-in: the owner used `used`; records what it is asked and what is kept."""

    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.asked: list[list[str]] = []
        self.persisted: list[str] = []

    async def known_tags(self, tags: list[str]) -> set[str]:
        self.asked.append(tags)
        return self.used & set(tags)

    async def persist(self, result: dict[str, Any], tags: list[str]) -> None:
        self.persisted = tags


async def test_only_tags_that_can_be_kept_are_asked_about() -> None:
    """Tags are normalized before the question; invalid ones and non-strings are not asked
    about, since they are dropped whatever the answer; known ones do not count as new."""
    tags = ["Job Queue", "c++", 5, "skip_locked", "Rust", "go", "zig", "lua"]
    answer = {"summary": "s", "tags": tags}
    port = RecordingPort(used={"job-queue", "skip-locked"})
    item = stages.Item(
        owner="alice",
        content_type="markdown",
        resource_key="cid:1",
        source_url=None,
        title="t",
        tags=[],
        body="# t\n\nSome text.",
        source_metadata={},
    )
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, FixedAnalyzer(answer), clock=lambda: NOW)
        await stages.run_pipeline(item, port, ctx, stages.Run(full=False, clock=ctx.clock))
    assert port.asked == [["job-queue", "skip-locked", "rust", "go", "zig", "lua"]]
    assert port.persisted == ["job-queue", "skip-locked", "rust", "go", "zig"]  # 3 new at most


def note(body: str, title: str = "t") -> stages.Item:
    return stages.Item(
        owner="alice",
        content_type="markdown",
        resource_key="cid:1",
        source_url=None,
        title=title,
        tags=[],
        body=body,
        source_metadata={},
    )


async def test_builtin_tags_from_a_huge_word_fit_the_tag_index() -> None:
    """A 4000-letter word or title does not become a tag that fails the job at persist."""
    word = "x" * 4000
    body = (
        f"# PostgreSQL queues\n\nThe word {word} is long. PostgreSQL job queues use {word} often."
        f" Workers claim PostgreSQL rows with SKIP LOCKED, then {word} again."
    )
    port = RecordingPort(used=set())
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, builtin.BuiltinAnalyzer(), clock=lambda: NOW)
        await stages.run_pipeline(
            note(body, title="y" * 10_000), port, ctx, stages.Run(full=False, clock=ctx.clock)
        )
    assert all(len(tag) <= 100 for tag in port.persisted), [len(tag) for tag in port.persisted]


class TextAnalyzer:
    """Answers every request, and the repair call, with the same text; counts repair calls."""

    name = "text"

    def __init__(self, text: str, finish_reason: str | None = None) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.repairs = 0

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        return analyzers.Answer(text=self.text, model="text", finish_reason=self.finish_reason)

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        self.repairs += 1
        return first


async def test_a_deeply_nested_answer_fails_like_any_answer_without_json() -> None:
    """100,000 nested objects get one repair call, then EMPTY_RESPONSE at parse."""
    analyzer = TextAnalyzer('{"a":' * 100_000 + "1" + "}" * 100_000)
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, analyzer, clock=lambda: NOW)
        run = stages.Run(full=False, clock=ctx.clock)
        with pytest.raises(errors.PipelineError) as caught:
            await stages.run_pipeline(note("# t\n\nSome text."), RecordingPort(set()), ctx, run)
    assert (caught.value.code, run.current, analyzer.repairs) == ("EMPTY_RESPONSE", "parse", 1)


async def test_an_answer_cut_off_at_the_token_limit_says_so() -> None:
    """An answer that ended at the model's token limit (`finish_reason: length`) fails with a
    message saying so, and the finish reason is in the diagnostics: without it the failure
    named only the keys of a topic nested in the unfinished result."""
    whole = json.dumps({"summary": "s", "topics": [{"name": "Queues", "confidence": 0.8}]})
    analyzer = TextAnalyzer(whole[:-1], finish_reason="length")
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, analyzer, clock=lambda: NOW)
        run = stages.Run(full=False, clock=ctx.clock)
        with pytest.raises(errors.PipelineError) as caught:
            await stages.run_pipeline(note("# t\n\nSome text."), RecordingPort(set()), ctx, run)
    assert caught.value.code == "PARSE_FAILED"
    assert "cut off at its token limit" in caught.value.message
    assert run.diagnostics["finish_reason"] == "length"


class CutRepairAnalyzer(TextAnalyzer):
    """Prose first; the repair answer is cut off at the token limit inside a nested object."""

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        self.repairs += 1
        whole = json.dumps({"topics": [{"name": "Queues", "confidence": 0.8}], "summary": "s"})
        return analyzers.Answer(text=whole[:-5], model="text", finish_reason="length")


async def test_a_repair_answer_cut_off_at_the_token_limit_says_so() -> None:
    """The object read from a cut-off repair answer is the repair's: the message says so."""
    analyzer = CutRepairAnalyzer("No JSON here, sorry.", finish_reason="stop")
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, analyzer, clock=lambda: NOW)
        run = stages.Run(full=False, clock=ctx.clock)
        with pytest.raises(errors.PipelineError) as caught:
            await stages.run_pipeline(note("# t\n\nSome text."), RecordingPort(set()), ctx, run)
    assert (caught.value.code, analyzer.repairs) == ("PARSE_FAILED", 1)
    assert "cut off at its token limit" in caught.value.message


@pytest.mark.parametrize("body", ["", " \n\t", "\u200b\u200b", "\u200b \u2060\n\u200d\ufeff"])
async def test_a_note_with_nothing_visible_is_content_empty(body: str) -> None:
    """Whitespace and invisible characters such as zero-width spaces are no readable text."""
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, builtin.BuiltinAnalyzer(), clock=lambda: NOW)
        run = stages.Run(full=False, clock=ctx.clock)
        with pytest.raises(errors.PipelineError) as caught:
            await stages.run_pipeline(note(body), RecordingPort(set()), ctx, run)
    assert (caught.value.code, run.current) == ("CONTENT_EMPTY", "prepare")


@pytest.mark.parametrize("field", ["extra", "topics", "entities"])
async def test_an_answer_nesting_as_deep_as_json_goes_still_completes(field: str) -> None:
    """A value nested 700 deep parses as JSON, but made storable by recursion it raised
    RecursionError: the job failed PIPELINE_EXCEPTION where a field of the wrong type takes
    its default."""
    answer = '{"summary": "s", "' + field + '": ' + "[" * 700 + "]" * 700 + "}"
    port = RecordingPort(set())
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, TextAnalyzer(answer), clock=lambda: NOW)
        run = stages.Run(full=False, clock=ctx.clock)
        await stages.run_pipeline(note("# t\n\nSome text."), port, ctx, run)
    assert run.current == "persist" and port.persisted == []


async def test_a_failed_model_call_keeps_what_was_sent_and_answered_in_the_full_tier() -> None:
    """The full tier is what an operator reads when a model server misbehaves: the prompt and
    the answer of a failed call (first or repair) are kept, the API key masked in it."""
    calls: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            body = {"choices": [{"message": {"content": "Sorry, no JSON today."}}]}
            return httpx.Response(200, json=body)
        return httpx.Response(401, json={"error": {"message": "bad key sk-secret-key"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        analyzer = openai.OpenAIAnalyzer(
            http,
            base_url="http://llm.test/v1",
            model="m",
            api_key="sk-secret-key",
            timeout_s=5,
            max_chars=1000,
        )
        ctx = offline_context(http, analyzer, clock=lambda: NOW)
        run = stages.Run(full=True, clock=ctx.clock)
        with pytest.raises(errors.PipelineError) as caught:
            await stages.run_pipeline(note("# t\n\nSome text."), RecordingPort(set()), ctx, run)
    assert (caught.value.code, run.current) == ("LLM_CALL_ERROR", "parse")
    payload = run.full_payload or {}
    assert payload["raw_answer"] == "Sorry, no JSON today."
    assert "Some text." in payload["repair_prompt"]
    assert "bad key ***" in payload["repair_answer"]
    assert "sk-secret-key" not in json.dumps(payload)


async def test_the_submitters_own_tags_echoed_back_are_not_new() -> None:
    """The prompt shows the submitter's tags; echoed back by the model they are the owner's
    own, so they are not new and do not count against the 3 new tags: only 3 of the 5 were
    kept before."""
    given = ["Home Lab", "kubernetes", "networking", "storage", "backups"]
    answer = {"summary": "s", "tags": [*given, "zfs"]}
    item = msgspec.structs.replace(note("# t\n\nSome text."), tags=given)
    port = RecordingPort(set())
    async with httpx.AsyncClient() as http:
        ctx = offline_context(http, FixedAnalyzer(answer), clock=lambda: NOW)
        await stages.run_pipeline(item, port, ctx, stages.Run(full=False, clock=ctx.clock))
    assert port.persisted == ["home-lab", "kubernetes", "networking", "storage", "backups", "zfs"]


@pytest.mark.parametrize(
    ("content_type", "resource_key", "code"),
    [("youtube", "yt:bad", "SOURCE_NOT_FOUND"), ("web", "url:AbC_d-E", "FETCH_FAILED")],
)
async def test_a_row_written_by_hand_with_nothing_to_fetch_fails_in_fetch(
    content_type: str, resource_key: str, code: str
) -> None:
    """A video whose key names no video id was asked of YouTube anyway, and a web page
    without a source_url failed PIPELINE_EXCEPTION: each fails in fetch, saying why, and
    nothing is requested."""
    asked: list[httpx.Request] = []

    def anyone(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(500)

    item = msgspec.structs.replace(
        note(""), content_type=content_type, resource_key=resource_key, body=None
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(anyone)) as http:
        ctx = offline_context(http, builtin.BuiltinAnalyzer(), clock=lambda: NOW)
        run = stages.Run(full=False, clock=ctx.clock)
        with pytest.raises(errors.PipelineError) as caught:
            await stages.run_pipeline(item, RecordingPort(set()), ctx, run)
    assert (caught.value.code, run.current, asked) == (code, "fetch", [])

"""Stage names, what a stage may ask of its worker, and the runner that walks the five stages."""

from __future__ import annotations

import datetime as dt
import re
import time
import unicodedata
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

import httpx
import msgspec
import structlog

from menos import errors, markdown
from menos.pipeline import analyzers, resource_keys, result, threads
from menos.pipeline.sources import fetched as fetched_mod
from menos.pipeline.sources import web, youtube

Stage = Literal["fetch", "prepare", "analyze", "parse", "persist"]
STAGES: tuple[Stage, ...] = ("fetch", "prepare", "analyze", "parse", "persist")
# The stages that wait on the network (a page, a transcript, the model): a cancel cuts them off.
INTERRUPTIBLE: frozenset[Stage] = frozenset({"fetch", "analyze", "parse"})
EXCERPT_CHARS = 2000
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Up to this many characters a text is prepared on the event loop (a few ms at most); a
# longer one in a thread of its own.
INLINE_PREPARE_CHARS = 20_000

log = structlog.get_logger("menos.pipeline")


class Cancelled(Exception):
    """Cancellation was requested: stop at this boundary (`ended`: the job was already ended
    cancelled, by the write that would have completed it)."""

    def __init__(self, *, ended: bool = False) -> None:
        super().__init__()
        self.ended = ended


class Lost(Exception):
    """The worker no longer holds the job: drop the work silently."""


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """The content a run works on, as stored when the job was claimed."""

    owner: str
    content_type: Literal["youtube", "web", "markdown"]
    resource_key: str
    source_url: str | None
    title: str | None
    tags: list[str]
    body: str | None
    source_metadata: dict[str, Any]


class Port(Protocol):
    """What the pipeline needs from the worker running it; Lost/Cancelled come from here."""

    async def boundary(self, stage: Stage) -> None: ...

    async def interruptible(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a stage's work; a cancel asked meanwhile may cut it off (raising Cancelled)."""

    async def save_fetched(
        self, body: str, title: str | None, metadata: dict[str, Any]
    ) -> None: ...

    async def vocabulary(self) -> list[str]: ...

    async def known_tags(self, tags: list[str]) -> set[str]: ...

    async def persist(self, result: dict[str, Any], tags: list[str]) -> None: ...


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Everything stages use that is not the item: built once per worker."""

    http: httpx.AsyncClient  # for user-submitted URLs: SSRF-checked and pinned
    metadata_http: httpx.AsyncClient  # for operator-configured endpoints (oEmbed)
    analyzer: analyzers.Analyzer
    max_body_bytes: int
    oembed_url: str
    youtube_languages: tuple[str, ...]
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


class Run:
    """The record of one run: stage timings, compact diagnostics, the optional full payload."""

    def __init__(self, *, full: bool, clock: Callable[[], dt.datetime]) -> None:
        self.stages: list[Any] = []  # StageTiming-shaped dicts, in order
        self.current: Stage | None = None
        self.diagnostics: dict[str, Any] = {}
        self.full_payload: dict[str, Any] | None = {} if full else None
        self._clock = clock
        self._started = 0.0

    def begin(self, stage: Stage) -> None:
        self.current = stage
        self._started = time.perf_counter()
        self.stages.append(
            {"name": stage, "started_at": self._clock(), "finished_at": None, "duration_ms": None}
        )

    def end(self) -> float:
        duration_ms = round((time.perf_counter() - self._started) * 1000, 3)
        self.stages[-1] = {
            **self.stages[-1],
            "finished_at": self._clock(),
            "duration_ms": duration_ms,
        }
        return duration_ms

    def keep(self, **values: Any) -> None:
        """Add to the full payload (full tier only)."""
        if self.full_payload is not None:
            self.full_payload.update(values)


class _State:
    """What flows between stages within one run."""

    def __init__(self, item: Item) -> None:
        self.item = item
        self.text = ""
        self.title = item.title
        self.answer: analyzers.Answer | None = None
        self.request: analyzers.Request | None = None
        self.result: result.Result | None = None


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces, trim lines, keep paragraphs."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def has_visible_text(text: str) -> bool:
    """Whether text holds a character that is neither whitespace nor an invisible format
    character (category Cf: zero-width space, joiners, byte-order mark, …)."""
    return any(not char.isspace() and unicodedata.category(char) != "Cf" for char in text)


async def _fetch(state: _State, port: Port, ctx: Context, run: Run) -> None:
    item = state.item
    if item.content_type == "markdown":
        note = markdown.parse(item.body or "")
        state.text = note.text
        run.diagnostics["frontmatter_keys"] = sorted(note.metadata)
        return
    fetched_before = "video_id" in item.source_metadata or "final_url" in item.source_metadata
    if item.body and (fetched_before or item.content_type == "web"):
        # Stored by an earlier run (or supplied for a page): never fetched again.
        state.text = item.body
        run.diagnostics["fetch"] = "stored body"
        if item.content_type == "youtube" and "oembed_error" in item.source_metadata:
            # Only the title and channel an earlier oEmbed lookup could not get are asked again.
            title, details = await youtube.video_details(
                ctx.metadata_http,
                item.resource_key.removeprefix("yt:"),
                oembed_url=ctx.oembed_url,
            )
            state.title = item.title or title
            await port.save_fetched(item.body, title, details)
        return
    got: fetched_mod.Fetched
    if item.content_type == "youtube":
        video_id = item.resource_key.removeprefix("yt:")
        if not resource_keys.is_video_id(video_id):  # a key written by hand: nothing to ask
            raise errors.PipelineError(
                "SOURCE_NOT_FOUND", f"{item.resource_key!r} names no YouTube video"
            )
        # A supplied transcript is used as it is; oEmbed still gives the title and channel.
        got = await youtube.fetch_video(
            ctx.metadata_http,
            video_id,
            item.source_url or "",
            oembed_url=ctx.oembed_url,
            languages=list(ctx.youtube_languages),
            transcript=item.body or None,
        )
    elif not item.source_url:  # a row written by hand: no page to ask for
        raise errors.PipelineError("FETCH_FAILED", "the item has no source_url to fetch")
    else:
        got = await web.fetch_page(ctx.http, item.source_url, max_bytes=ctx.max_body_bytes)
    state.text = got.body
    state.title = item.title or got.title
    run.diagnostics["fetched_chars"] = len(got.body)
    await port.save_fetched(got.body, got.title, got.metadata)


def _prepared(text: str) -> tuple[str, bool]:
    """The text with its whitespace normalized, and whether it has any visible text."""
    text = normalize_whitespace(text)
    return text, has_visible_text(text)


async def _prepare(state: _State, port: Port, ctx: Context, run: Run) -> None:
    if len(state.text) <= INLINE_PREPARE_CHARS:
        state.text, visible = _prepared(state.text)
    else:
        # Most of a second for 5 MiB: on the event loop it held up the heartbeat, and the
        # leases of a worker preparing a few long texts at once ran out (short leases).
        state.text, visible = await threads.in_daemon_thread(_prepared, state.text)
    run.diagnostics["prepared_chars"] = len(state.text)
    if not visible:
        raise errors.PipelineError("CONTENT_EMPTY", "the content has no readable text")
    run.keep(source_excerpt=state.text[:EXCERPT_CHARS])


async def _analyze(state: _State, port: Port, ctx: Context, run: Run) -> None:
    item = state.item
    state.request = analyzers.Request(
        text=state.text,
        title=state.title,
        content_type=item.content_type,
        tags=item.tags,
        vocabulary=await port.vocabulary(),
    )
    try:
        state.answer = await ctx.analyzer.analyze(state.request)
    except errors.PipelineError as exc:
        _keep_failed_call(run, exc, prompt="prompt", answer="raw_answer")
        raise
    run.diagnostics["analyzer"] = ctx.analyzer.name
    run.diagnostics["model"] = state.answer.model
    if state.answer.usage is not None:
        run.diagnostics["usage"] = state.answer.usage
    if state.answer.finish_reason is not None:
        run.diagnostics["finish_reason"] = state.answer.finish_reason
    run.keep(prompt=state.answer.prompt, raw_answer=state.answer.text)


async def _parse(state: _State, port: Port, ctx: Context, run: Run) -> None:
    assert state.answer is not None and state.request is not None
    answer = state.answer  # the one whose object is read
    raw = result.extract_json(answer.text)
    run.diagnostics["repair_call"] = raw is None
    if raw is None:
        try:
            repaired = await ctx.analyzer.repair(state.request, state.answer)
        except errors.PipelineError as exc:
            _keep_failed_call(run, exc, prompt="repair_prompt", answer="repair_answer")
            raise
        run.keep(repair_prompt=repaired.prompt, repair_answer=repaired.text)
        if repaired.usage is not None:
            run.diagnostics["repair_usage"] = repaired.usage
        raw = result.extract_json(repaired.text)
        if raw is None:
            raise errors.PipelineError(
                "EMPTY_RESPONSE",
                "the analyzer gave no JSON object, also after one repair call"
                + _cut_off(state.answer, repaired),
            )
        answer = repaired
    candidates = raw.get("tags") if isinstance(raw.get("tags"), list) else []
    # Only tags that can be kept are asked about: coerce drops the others whatever the answer.
    valid = (result.normalize_tag(tag) for tag in candidates or [] if isinstance(tag, str))
    known = await port.known_tags([tag for tag in valid if tag is not None])
    # The submitter's tags, shown to the model, are the owner's own: echoed back, not new.
    known |= {tag for tag in map(result.normalize_tag, state.item.tags) if tag is not None}
    try:
        state.result = result.coerce(
            raw, known_tags=known, model=state.answer.model, processed_at=ctx.clock()
        )
    except errors.PipelineError as exc:
        # A cut-off answer's first whole object may be one nested in the unfinished result.
        raise errors.PipelineError(exc.code, exc.message + _cut_off(answer)) from exc


def _cut_off(*answers: analyzers.Answer) -> str:
    """What a parse failure's message adds when an answer ended at the model's token limit."""
    if any(answer.finish_reason == "length" for answer in answers):
        return " (the model's answer was cut off at its token limit: finish_reason length)"
    return ""


def _keep_failed_call(run: Run, exc: errors.PipelineError, *, prompt: str, answer: str) -> None:
    """Keep what a failed analyzer call sent and got (full tier), under these names."""
    names = {"prompt": prompt, "answer": answer}
    run.keep(**{names[key]: value for key, value in exc.kept.items() if key in names})


async def _persist(state: _State, port: Port, ctx: Context, run: Run) -> None:
    assert state.result is not None
    await port.persist(msgspec.to_builtins(state.result), list(state.result.tags))


_RUNNERS = {
    "fetch": _fetch,
    "prepare": _prepare,
    "analyze": _analyze,
    "parse": _parse,
    "persist": _persist,
}


async def run_pipeline(item: Item, port: Port, ctx: Context, run: Run) -> None:
    """Walk the five stages; checks the boundary (cancel, lease) before each, and lets a
    cancel cut off a stage that waits on the network.

    Raises PipelineError (a job failure), Cancelled or Lost; `run.current` names the stage.
    """
    state = _State(item)
    for stage in STAGES:
        await port.boundary(stage)
        run.begin(stage)
        work = _RUNNERS[stage](state, port, ctx, run)
        await (port.interruptible(work) if stage in INTERRUPTIBLE else work)
        duration_ms = run.end()
        log.info("stage_finished", stage=stage, duration_ms=duration_ms)

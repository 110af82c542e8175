"""The openai analyzer: one chat-completions call to any OpenAI-compatible server, JSON only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from menos import errors, storable
from menos.pipeline import analyzers, bounded

SYSTEM_PROMPT = """You analyze content for a personal knowledge base.
Answer with one JSON object and nothing else: no prose, no code fences.
The object has exactly these fields:
- "summary": string, 2 to 4 sentences saying what the content is about and why it matters.
- "tags": array of at most 10 lower-case tags; words joined by "-" (for example "job-queue").
- "tier": one of "S", "A", "B", "C", "D" (S exceptional, A very good, B good, C ordinary, D poor).
- "tier_explanation": array of short strings saying why that tier.
- "quality_score": integer from 1 to 100.
- "score_explanation": array of short strings saying why that score.
- "topics": array of at most 7 objects {"name": string, "hierarchy": array of strings from the
  broadest to the narrowest (for example ["Computing", "Databases", "PostgreSQL"]),
  "confidence": number from 0 to 1}.
- "entities": array of objects {"type": string (person, organization, place, product,
  technology, work or event), "name": string}."""

VOCABULARY_PROMPT = (
    "The owner already uses these tags; prefer them when they fit and add at most 3 new ones: "
)

REPAIR_PROMPT = (
    "Your answer could not be read as a JSON object. Reply with the JSON object only, with the "
    "fields described above: no prose, no code fences, no reasoning."
)

MAX_DETAIL = 200
# What is kept of the server's `model` and `usage`: both are stored on every job (compact tier
# included) and the model name in the result, where every other string is bounded too.
MAX_MODEL_CHARS = 200
MAX_USAGE_BYTES = 4096
MAX_FINISH_REASON_CHARS = 50  # `stop`, `length`, `content_filter`, …
# A chat completion's body: a JSON object and perhaps a reasoning trace, far below this.
MAX_ANSWER_BYTES = 8 * 2**20


class OpenAIAnalyzer:
    """Analyzer backed by an OpenAI-compatible `/chat/completions` endpoint."""

    name: str = "openai"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout_s: float,
        max_chars: int,
        json_mode: bool = True,
    ) -> None:
        """`json_mode` asks the server for a JSON object (`response_format`); some servers
        (LM Studio) refuse that field, and then only the prompt asks for JSON."""
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_chars <= 0:
            raise ValueError("max_chars must be positive")
        self._client = client
        # Appended to the path as written (an escaped `%2F` stays one): a query (Azure's
        # `?api-version=…`) stays the query.
        url = httpx.URL(base_url)
        path, mark, query = url.raw_path.partition(b"?")
        self._url = url.copy_with(raw_path=path.rstrip(b"/") + b"/chat/completions" + mark + query)
        self._model = model
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        self._max_chars = max_chars
        self._json_mode = json_mode

    async def analyze(self, request: analyzers.Request) -> analyzers.Answer:
        """Ask the model for the result object; one HTTP call."""
        return await self._complete(self._messages(request))

    async def repair(self, request: analyzers.Request, first: analyzers.Answer) -> analyzers.Answer:
        """Show the model its first answer and ask for the JSON object only; one HTTP call."""
        messages = [
            *self._messages(request),
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": REPAIR_PROMPT},
        ]
        return await self._complete(messages)

    def _messages(self, request: analyzers.Request) -> list[dict[str, str]]:
        """The system and user messages for one request."""
        system = SYSTEM_PROMPT
        if request.vocabulary:
            system += "\n\n" + VOCABULARY_PROMPT + ", ".join(request.vocabulary)
        lines = [f"Title: {request.title or '(none)'}", f"Content type: {request.content_type}"]
        if request.tags:
            lines.append(f"Tags given by the submitter: {', '.join(request.tags)}")
        lines += ["", "Text:", truncate(request.text, self._max_chars)]
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": "\n".join(lines)},
        ]

    async def _complete(self, messages: list[dict[str, str]]) -> analyzers.Answer:
        """POST the messages and read the answer; errors become PipelineError codes, which
        keep the prompt (and the answer, when one came) for the full tier."""
        prompt = render_prompt(messages)
        try:
            return await self._call(messages, prompt)
        except errors.PipelineError as exc:
            exc.kept["prompt"] = prompt
            raise

    async def _call(self, messages: list[dict[str, str]], prompt: str) -> analyzers.Answer:
        """One POST of the messages and its answer read."""
        body: dict[str, Any] = {"model": self._model, "messages": messages, "temperature": 0}
        if self._json_mode:
            body["response_format"] = {"type": "json_object"}
        # identity: the cap in _post is of the bytes themselves (one that compresses anyway
        # is inflated a bounded piece at a time).
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            # httpx timeouts bound each phase; asyncio bounds the whole call, so a server that
            # trickles bytes cannot hold a worker past timeout_s.
            async with asyncio.timeout(self._timeout_s):
                status, content = await self._post(body, headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise errors.PipelineError(
                "LLM_TIMEOUT", f"the model server did not answer within {self._timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise errors.PipelineError(
                "LLM_CALL_ERROR",
                f"the call to the model server failed: {type(exc).__name__}: "
                f"{self._redact(str(exc))[:MAX_DETAIL]}",
            ) from exc
        if content is None:
            raise errors.PipelineError(
                "LLM_CALL_ERROR",
                f"the model server's answer is over {MAX_ANSWER_BYTES // 2**20} MiB",
            )
        if not 200 <= status < 300:
            raise errors.PipelineError(
                "LLM_CALL_ERROR",
                f"the model server answered HTTP {status}" + self._error_detail(content),
                kept={"answer": self._stored(content)},
            )
        try:
            text, model, usage, finish_reason = self._read(content)
        except errors.PipelineError as exc:
            exc.kept["answer"] = self._stored(content)
            raise
        return analyzers.Answer(
            text=text, model=model, prompt=prompt, usage=usage, finish_reason=finish_reason
        )

    async def _post(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, bytes | None]:
        """The status and body of one POST; the body is None when it is over MAX_ANSWER_BYTES
        (an error body is cut there instead)."""
        async with self._client.stream(
            "POST", self._url, json=body, headers=headers, timeout=self._timeout_s
        ) as response:
            try:
                content, more = await bounded.body(response, MAX_ANSWER_BYTES)
            except bounded.Undecodable as exc:
                if not response.is_success:  # its status says more than its coding
                    return response.status_code, b""
                raise errors.PipelineError(
                    "LLM_CALL_ERROR", f"the model server's answer is {exc}"
                ) from exc
            if more and response.is_success:
                return response.status_code, None
            return response.status_code, content

    def _read(self, content: bytes) -> tuple[str, str, dict[str, Any] | None, str | None]:
        """Content, model name, usage and finish reason of a chat-completions body. A lone
        surrogate escape in its strings becomes U+FFFD rather than failing the call."""
        data: Any = None
        try:
            # The standard library's decoder, not msgspec's: msgspec refuses "\ud800", which
            # JSON allows and some servers send when a model cuts a character in two.
            data = json.loads(content)
            message = data["choices"][0]["message"]
            content_field = message.get("content")
            finish_reason = data["choices"][0].get("finish_reason")
        except (
            ValueError,  # not JSON, or not UTF-8 (UnicodeDecodeError)
            RecursionError,  # JSON nested deeper than the decoder goes (a few bytes a level)
            KeyError,
            IndexError,
            TypeError,
            AttributeError,
        ) as exc:
            # Some gateways answer an error with 200 and an `error` object: say what it is.
            reported = isinstance(data, dict) and data.get("error") is not None
            raise errors.PipelineError(
                "LLM_CALL_ERROR",
                "the model server's answer is not a chat completion"
                + (self._error_detail(content) if reported else ""),
            ) from exc
        if content_field is None:
            text = ""
        elif isinstance(content_field, str):
            text = content_field
        elif isinstance(content_field, list):
            # Some servers answer with content parts: keep the text ones, in order.
            text = "".join(
                part["text"]
                for part in content_field
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        else:
            raise errors.PipelineError(
                "LLM_CALL_ERROR", "the model server's answer has no text content"
            )
        model = data.get("model")
        usage = data.get("usage")
        if isinstance(usage, dict) and len(json.dumps(usage)) > MAX_USAGE_BYTES:
            usage = None  # token counts are a few numbers; anything that large is not them
        return (
            storable.text(text),
            storable.text(model[:MAX_MODEL_CHARS])
            if isinstance(model, str) and model
            else self._model,
            storable.anything(usage) if isinstance(usage, dict) else None,
            storable.text(finish_reason[:MAX_FINISH_REASON_CHARS])
            if isinstance(finish_reason, str) and finish_reason
            else None,
        )

    def _error_detail(self, content: bytes) -> str:
        """A short reason from an error body (`error.message` when present), secrets removed."""
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than it decodes
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            detail = error["message"]
        elif isinstance(error, str):
            detail = error
        else:
            detail = content.decode("utf-8", "replace")
        # storable: the message goes into the job's error and diagnostics, which PostgreSQL
        # must accept (JSON's "\ud800" decodes to a lone surrogate).
        detail = " ".join(storable.text(self._redact(detail)).split())[:MAX_DETAIL]
        return f": {detail}" if detail else ""

    def _stored(self, content: bytes) -> str:
        """A body as text that can be stored, secrets removed."""
        return storable.text(self._redact(content.decode("utf-8", "replace")))

    def _redact(self, text: str) -> str:
        """Text with the API key masked, should a server echo it."""
        return text.replace(self._api_key, "***") if self._api_key else text


def truncate(text: str, max_chars: int) -> str:
    """Cut text to max_chars characters and say so visibly; shorter text is unchanged."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[… truncated: {max_chars} of {len(text)} characters shown]"


def render_prompt(messages: list[dict[str, str]]) -> str:
    """The messages as one readable text, as recorded in diagnostics."""
    return "\n\n".join(f"[{message['role']}]\n{message['content']}" for message in messages)

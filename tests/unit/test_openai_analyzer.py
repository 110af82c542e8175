"""The openai analyzer: one chat-completions call per analysis, errors mapped to the taxonomy."""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from menos import errors, settings
from menos.pipeline import analyzers
from menos.pipeline.analyzers import openai
from tests.support import wire

ANSWER = '{"summary": "s", "tags": ["a"], "tier": "B"}'
USAGE = {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366}

Handler = Callable[[httpx.Request], Any]


def completion(content: object = ANSWER, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    body.update(extra)
    return body


def request(text: str = "Some text to read.", **fields: Any) -> analyzers.Request:
    values: dict[str, Any] = {
        "text": text,
        "title": "A title",
        "content_type": "web",
        "tags": [],
        "vocabulary": [],
    }
    values.update(fields)
    return analyzers.Request(**values)


class Server:
    """Records what the analyzer sends and answers with the given handler."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda _: httpx.Response(200, json=completion()))

    async def __call__(self, sent: httpx.Request) -> httpx.Response:
        self.requests.append(sent)
        answer = self.handler(sent)
        if asyncio.iscoroutine(answer):
            answer = await answer
        assert isinstance(answer, httpx.Response)
        return answer

    def body(self, index: int = 0) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.requests[index].content)
        return decoded


class Make:
    """Builds analyzers on mock transports and closes their clients after the test."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []

    def __call__(
        self,
        server: Server,
        *,
        base_url: str = "http://llm.test/v1/",
        api_key: str | None = "sk-secret-key",
        timeout_s: float = 5.0,
        max_chars: int = 1000,
        json_mode: bool = True,
    ) -> openai.OpenAIAnalyzer:
        client = httpx.AsyncClient(transport=httpx.MockTransport(server))
        self.clients.append(client)
        return openai.OpenAIAnalyzer(
            client,
            base_url=base_url,
            model="qwen2.5:7b",
            api_key=api_key,
            timeout_s=timeout_s,
            max_chars=max_chars,
            json_mode=json_mode,
        )


@pytest.fixture
async def analyzer() -> AsyncIterator[Make]:
    make = Make()
    yield make
    for client in make.clients:
        await client.aclose()


async def test_request_shape(analyzer: Make) -> None:
    """One POST to {base_url}/chat/completions: model, two messages, temperature 0, JSON mode."""
    server = Server()
    await analyzer(server).analyze(request())
    assert len(server.requests) == 1
    sent = server.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == "http://llm.test/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-secret-key"
    body = server.body()
    assert body["model"] == "qwen2.5:7b"
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert [message["role"] for message in body["messages"]] == ["system", "user"]


async def test_json_mode_off_sends_no_response_format(analyzer: Make) -> None:
    """LM Studio refuses `response_format: json_object` (400), failing every job:
    MENOS_LLM_JSON_MODE=false leaves the field out, and the prompt still asks for JSON."""
    server = Server()
    await analyzer(server, json_mode=False).analyze(request())
    body = server.body()
    assert "response_format" not in body
    assert "JSON" in body["messages"][0]["content"]
    assert settings.from_env({"MENOS_LLM_JSON_MODE": "false"}).llm_json_mode is False
    assert settings.from_env({}).llm_json_mode is True


async def test_system_prompt_asks_for_every_result_field(analyzer: Make) -> None:
    """The model is told to answer JSON only with every result field of the stored result."""
    server = Server()
    await analyzer(server).analyze(request())
    system = server.body()["messages"][0]["content"]
    assert "JSON" in system
    for field in (
        "summary",
        "tags",
        "tier",
        "tier_explanation",
        "quality_score",
        "score_explanation",
        "topics",
        "hierarchy",
        "confidence",
        "entities",
    ):
        assert f'"{field}"' in system


async def test_vocabulary_is_offered_as_preferred_tags(analyzer: Make) -> None:
    """The owner's most used tags are listed in the prompt as preferred tags."""
    server = Server()
    await analyzer(server).analyze(request(vocabulary=["postgresql", "job-queue"]))
    system = server.body()["messages"][0]["content"]
    assert "postgresql, job-queue" in system


async def test_user_message_has_title_and_text(analyzer: Make) -> None:
    """The user message carries the title and the full text when it fits."""
    server = Server()
    await analyzer(server).analyze(request("Hello there.", title="Greeting"))
    user = server.body()["messages"][1]["content"]
    assert "Greeting" in user
    assert user.endswith("Hello there.")
    assert "truncated" not in user


async def test_long_text_is_cut_with_a_visible_marker(analyzer: Make) -> None:
    """Text over max_chars is cut and the model is told how much it sees."""
    server = Server()
    await analyzer(server, max_chars=100).analyze(request("x" * 250))
    user = server.body()["messages"][1]["content"]
    assert "x" * 100 + "\n[… truncated: 100 of 250 characters shown]" in user
    assert "x" * 101 not in user


async def test_answer_carries_content_model_prompt_and_usage(analyzer: Make) -> None:
    """The answer text, the server's model name, the prompt sent and token usage are returned."""
    server = Server(
        lambda _: httpx.Response(200, json=completion(model="qwen2.5:7b-instruct", usage=USAGE))
    )
    answer = await analyzer(server).analyze(request("Body text."))
    assert answer.text == ANSWER
    assert answer.model == "qwen2.5:7b-instruct"
    assert answer.usage == USAGE
    assert answer.prompt is not None
    assert "Body text." in answer.prompt
    assert "JSON" in answer.prompt


async def test_missing_model_and_usage_fall_back(analyzer: Make) -> None:
    """Without a model name or usage in the response, the configured model and None are used."""
    answer = await analyzer(Server()).analyze(request())
    assert answer.model == "qwen2.5:7b"
    assert answer.usage is None


async def test_a_huge_model_name_and_usage_are_not_stored_whole(analyzer: Make) -> None:
    """A server answering a 3 MiB model name and usage made every job, compact ones included,
    store megabytes (and the result's model); the name is cut and the usage left out."""
    server = Server(
        lambda _: httpx.Response(
            200, json=completion(model="M" * 3 * 2**20, usage={"junk": "x" * 3 * 2**20})
        )
    )
    answer = await analyzer(server).analyze(request())
    assert answer.model == "M" * openai.MAX_MODEL_CHARS
    assert answer.usage is None


async def test_finish_reason_is_read(analyzer: Make) -> None:
    """The choice's finish_reason is kept (`length`: the answer hit the token limit)."""
    body = completion()
    body["choices"][0]["finish_reason"] = "length"
    answer = await analyzer(Server(lambda _: httpx.Response(200, json=body))).analyze(request())
    assert answer.finish_reason == "length"


async def test_no_api_key_sends_no_authorization(analyzer: Make) -> None:
    """A local server without a key gets no Authorization header."""
    server = Server()
    await analyzer(server, api_key=None, base_url="http://llm.test/v1").analyze(request())
    assert "authorization" not in server.requests[0].headers
    assert str(server.requests[0].url) == "http://llm.test/v1/chat/completions"


async def test_base_url_query_stays_a_query(analyzer: Make) -> None:
    """`/chat/completions` goes on the base URL's path: a query such as Azure's api-version
    is kept as the query, not turned into `?api-version=…/chat/completions`."""
    server = Server()
    base_url = "http://llm.test/openai/deployments/gpt?api-version=2024-10-21"
    await analyzer(server, base_url=base_url).analyze(request())
    sent = server.requests[0].url
    assert sent.path == "/openai/deployments/gpt/chat/completions"
    assert sent.params["api-version"] == "2024-10-21"


async def test_base_url_path_escapes_are_kept(analyzer: Make) -> None:
    """An escaped slash in the base URL's path is sent as it is written, not as a `/` that
    names another path."""
    server = Server()
    base_url = "http://llm.test/models/org%2Fmodel/v1?api-version=1"
    await analyzer(server, base_url=base_url).analyze(request())
    sent = server.requests[0].url
    assert sent.raw_path == b"/models/org%2Fmodel/v1/chat/completions?api-version=1"


async def test_repair_shows_the_first_answer(analyzer: Make) -> None:
    """The repair call replays the conversation with the model's first answer and asks again."""
    server = Server()
    analyzer_ = analyzer(server)
    first = analyzers.Answer(text="Sure! Here is a summary of the text.", model="m")
    answer = await analyzer_.repair(request(), first)
    assert answer.text == ANSWER
    messages = server.body()["messages"]
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == first.text
    assert "JSON object only" in messages[3]["content"]
    assert server.body()["response_format"] == {"type": "json_object"}


async def test_transport_timeout_is_llm_timeout(analyzer: Make) -> None:
    """A server that does not answer in time fails the job with LLM_TIMEOUT."""

    def handler(sent: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=sent)

    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(Server(handler)).analyze(request())
    assert caught.value.code == "LLM_TIMEOUT"


async def test_slow_server_is_cut_off_after_timeout_s(analyzer: Make) -> None:
    """A server slower than timeout_s fails with LLM_TIMEOUT instead of holding the worker."""

    async def handler(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # the slow server itself: the timeout cuts it off
        return httpx.Response(200, json=completion())

    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(Server(handler), timeout_s=0.05).analyze(request())
    assert caught.value.code == "LLM_TIMEOUT"


async def test_server_error_is_llm_call_error_with_status(analyzer: Make) -> None:
    """An HTTP 500 fails the job with LLM_CALL_ERROR naming the status code."""
    server = Server(lambda _: httpx.Response(500, json={"error": {"message": "model crashed"}}))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert "500" in caught.value.message
    assert "model crashed" in caught.value.message


async def test_server_error_with_a_body_that_is_not_utf8_is_llm_call_error(
    analyzer: Make,
) -> None:
    """An HTTP 502 whose body is not UTF-8 still fails with LLM_CALL_ERROR naming the status."""
    server = Server(lambda _: httpx.Response(502, content=b'{"error": "bad \xff gateway"}'))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert "502" in caught.value.message


async def test_error_message_is_short_and_never_shows_the_key(analyzer: Make) -> None:
    """A 401 that echoes the API key yields a short message with the key masked."""
    body = {"error": {"message": "Incorrect API key provided: sk-secret-key. " + "x" * 2000}}
    server = Server(lambda _: httpx.Response(401, json=body))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert "401" in caught.value.message
    assert "sk-secret-key" not in caught.value.message
    assert len(caught.value.message) <= 500


async def test_error_message_holds_no_control_characters(analyzer: Make) -> None:
    """Escape sequences in an error body (a terminal's title, clear screen) do not reach the
    message that `reprocess --wait` prints: control and format characters become spaces."""
    message = "overloaded \x1b]0;title\x07\x1b[2J\x1b[31mred\x08\u202e"
    server = Server(lambda _: httpx.Response(503, json={"error": {"message": message}}))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert (
        caught.value.message
        == "the model server answered HTTP 503: overloaded ]0;title [2J [31mred"
    )
    assert caught.value.message.isprintable()


async def test_connection_error_is_llm_call_error(analyzer: Make) -> None:
    """An unreachable server fails the job with LLM_CALL_ERROR."""

    def handler(sent: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=sent)

    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(Server(handler)).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert "Connection refused" in caught.value.message


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>gateway</html>"),
        httpx.Response(200, json={"choices": []}),
        httpx.Response(200, json={"result": "ok"}),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"choices": [{"text": "legacy completion"}]}),
        httpx.Response(200, json=completion(content=42)),
        httpx.Response(200, content=b'{"choices": [{"message": {"content": "caf\xe9"}}]}'),
    ],
)
async def test_body_that_is_not_a_chat_completion_is_llm_call_error(
    response: httpx.Response, analyzer: Make
) -> None:
    """A 200 whose body is not a chat completion fails with LLM_CALL_ERROR."""
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(Server(lambda _: response)).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"


@pytest.mark.parametrize(
    "body",
    [{"error": {"message": "model 'llama9' not found"}}, {"error": "model 'llama9' not found"}],
)
async def test_an_error_answered_with_200_says_what_the_server_reported(
    body: dict[str, Any], analyzer: Make
) -> None:
    """Some gateways answer an error with HTTP 200 and an `error` object: the job's message
    says what it reported, not only that the answer is not a chat completion."""
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(Server(lambda _: httpx.Response(200, json=body))).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert caught.value.message == (
        "the model server's answer is not a chat completion: model 'llama9' not found"
    )


@pytest.mark.parametrize("content", [None, "", "   \n"])
async def test_empty_content_is_returned_for_the_parse_stage(
    content: str | None, analyzer: Make
) -> None:
    """An empty answer is not an HTTP failure: it is returned so parsing can report it."""
    server = Server(lambda _: httpx.Response(200, json=completion(content=content)))
    answer = await analyzer(server).analyze(request())
    assert answer.text.strip() == ""


async def test_content_parts_are_joined(analyzer: Make) -> None:
    """Servers answering with a list of text parts are read as the concatenated text."""
    parts = [{"type": "text", "text": '{"summary": '}, {"type": "text", "text": '"s"}'}]
    server = Server(lambda _: httpx.Response(200, json=completion(content=parts)))
    assert (await analyzer(server).analyze(request())).text == '{"summary": "s"}'


async def test_an_answer_over_the_cap_is_llm_call_error_without_reading_it_whole(
    analyzer: Make,
) -> None:
    """A 200 body over MAX_ANSWER_BYTES fails the call once the cap is passed: the stream is
    not read to its end (here it never ends)."""
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        chunk = b"x" * 65536
        while True:
            read += len(chunk)
            yield chunk

    server = Server(lambda _: httpx.Response(200, content=endless()))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert "over 8 MiB" in caught.value.message
    assert read <= openai.MAX_ANSWER_BYTES + 65536


async def test_an_endless_error_body_still_names_the_status(analyzer: Make) -> None:
    """A 500 whose body never ends is read up to the cap and reported with its status."""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"overloaded " * 6000

    server = Server(lambda _: httpx.Response(500, content=endless()))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert caught.value.message.startswith("the model server answered HTTP 500: overloaded")


async def test_a_lone_surrogate_escape_in_the_answer_becomes_a_replacement_character(
    analyzer: Make,
) -> None:
    """JSON allows "\\ud83d" alone (a model cut an emoji in two); the answer is still read,
    and what is kept is storable."""
    body = (
        b'{"model": "m\\udc00", "choices": [{"message": {"content":'
        b' "{\\"summary\\": \\"cut \\ud83d here\\"}"}}]}'
    )
    server = Server(lambda _: httpx.Response(200, content=body))
    answer = await analyzer(server).analyze(request())
    assert answer.text == '{"summary": "cut \ufffd here"}'
    assert answer.model == "m\ufffd"


async def test_the_answer_is_asked_for_uncompressed(analyzer: Make) -> None:
    """The size cap counts the bytes themselves, so no compressed answer is accepted."""
    server = Server()
    await analyzer(server).analyze(request())
    assert server.requests[0].headers["accept-encoding"] == "identity"


async def test_a_lone_surrogate_in_an_error_message_is_storable(analyzer: Make) -> None:
    """The error's message goes into the job's error and diagnostics: a lone surrogate in it
    becomes U+FFFD, or recording the failure would be refused and the job left processing."""
    body = b'{"error": {"message": "bad input \\ud800 here"}}'
    server = Server(lambda _: httpx.Response(500, content=body))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.message == "the model server answered HTTP 500: bad input \ufffd here"
    caught.value.message.encode()  # what storage needs: no lone surrogate is left


@pytest.mark.parametrize("status", [200, 500])
async def test_json_nested_deeper_than_python_reads_is_llm_call_error(
    status: int, analyzer: Make
) -> None:
    """A body of JSON nested 100 000 deep (well under the size cap) is no chat completion:
    LLM_CALL_ERROR naming the status, not the decoder's RecursionError as an unexpected
    PIPELINE_EXCEPTION."""
    nested = b"[" * 100_000 + b"]" * 100_000
    body = nested if status == 200 else b'{"error": ' + nested + b"}"
    server = Server(lambda _: httpx.Response(status, content=body))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    if status == 200:
        assert caught.value.message == "the model server's answer is not a chat completion"
    else:
        assert caught.value.message.startswith("the model server answered HTTP 500: {")


def _gzip_of_zeros(size: int, *, layers: int = 1) -> bytes:
    data = b"\0" * size
    for _ in range(layers):
        data = gzip.compress(data, compresslevel=9)
    return data


@pytest.mark.parametrize(("layers", "size"), [(1, 64 * 2**20), (2, 256 * 2**20)])
async def test_a_compressed_answer_sent_unasked_is_capped_before_it_is_inflated(
    layers: int, size: int, analyzer: Make
) -> None:
    """A server that compresses although asked for identity (64 MiB in 64 KB of gzip, or
    256 MiB in a few KB of `gzip, gzip`) fails at the 8 MiB cap with memory near the cap:
    httpx inflated each network read whole before the cap was checked."""
    bomb = _gzip_of_zeros(size, layers=layers)
    coding = ", ".join(["gzip"] * layers)
    server = Server(
        lambda _: httpx.Response(200, headers={"content-encoding": coding}, stream=wire.Wire(bomb))
    )
    tracemalloc.start()
    try:
        with pytest.raises(errors.PipelineError) as caught:
            await analyzer(server).analyze(request())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "LLM_CALL_ERROR"
    assert peak < 4 * openai.MAX_ANSWER_BYTES, peak


async def test_a_gzipped_answer_sent_unasked_is_still_read(analyzer: Make) -> None:
    """A small answer compressed against the request's wish is inflated and read."""
    body = gzip.compress(json.dumps(completion()).encode())
    server = Server(
        lambda _: httpx.Response(200, headers={"content-encoding": "gzip"}, stream=wire.Wire(body))
    )
    assert (await analyzer(server).analyze(request())).text == ANSWER


@pytest.mark.parametrize(
    ("status", "coding", "body", "message"),
    [
        (
            200,
            "gzip, gzip",
            gzip.compress(gzip.compress(b"{}")),
            "the model server's answer is encoded 2 times over (gzip, gzip)",
        ),
        (503, "br", b"\x1b\x03\x00\xf8\xa5\x12\x08", "the model server answered HTTP 503"),
        (502, "gzip", b"<html>Bad Gateway</html>", "the model server answered HTTP 502"),
    ],
)
async def test_an_answer_in_a_coding_not_read_here_says_whose_and_its_status(
    status: int, coding: str, body: bytes, message: str, analyzer: Make
) -> None:
    """The job's error says the model server's answer could not be decoded, and an error
    answer keeps its HTTP status (what a user looks at first) whatever its coding."""
    server = Server(
        lambda _: httpx.Response(
            status, headers={"content-encoding": coding}, stream=wire.Wire(body)
        )
    )
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request())
    assert caught.value.code == "LLM_CALL_ERROR"
    assert caught.value.message == message


async def test_a_call_that_is_not_a_chat_completion_keeps_its_prompt_and_body(
    analyzer: Make,
) -> None:
    """The job's full tier can show what was sent and what came back instead of an answer."""
    server = Server(lambda _: httpx.Response(200, text="<html>proxy login</html>"))
    with pytest.raises(errors.PipelineError) as caught:
        await analyzer(server).analyze(request("Body text."))
    assert caught.value.code == "LLM_CALL_ERROR"
    assert "Body text." in caught.value.kept["prompt"]
    assert caught.value.kept["answer"] == "<html>proxy login</html>"

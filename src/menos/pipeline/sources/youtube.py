"""YouTube source: the transcript from youtube-transcript-api, title and channel from oEmbed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import requests
import requests.adapters
import urllib3.exceptions
import urllib3.response
import youtube_transcript_api

from menos import errors
from menos.pipeline import bounded, threads
from menos.pipeline.sources import fetched

_OEMBED_TIMEOUT_S = 10.0  # the whole lookup, answer included
_OEMBED_MAX_BYTES = 64 * 1024  # a title and a channel name: real answers are under 1 KiB
# The transcript library sends requests without a timeout; each of them gets this one.
_TRANSCRIPT_TIMEOUT_S = 30.0
# It makes several requests per transcript: the whole download is bounded by this.
TRANSCRIPT_TOTAL_S = 60.0
# One answer of YouTube's (a watch page, the player's JSON, a caption file) is far smaller.
_TRANSCRIPT_MAX_BYTES = 32 * 2**20
_READ_BYTES = 64 * 1024
# A pause this long between caption snippets starts a new paragraph.
_PARAGRAPH_PAUSE_S = 2.0
# Paragraphs end at a sentence end once this long, and at any snippet once twice as long.
_PARAGRAPH_CHARS = 500
_SENTENCE_END = (".", "?", "!", "…")
# Library failures meaning the video or its transcript does not exist for us.
_NOT_FOUND = (
    youtube_transcript_api.NoTranscriptFound,
    youtube_transcript_api.TranscriptsDisabled,
    youtube_transcript_api.VideoUnavailable,
    youtube_transcript_api.VideoUnplayable,
    youtube_transcript_api.AgeRestricted,
    youtube_transcript_api.InvalidVideoId,
)


class _OEmbed(msgspec.Struct):
    title: str | None = None
    author_name: str | None = None


class _Snippet(msgspec.Struct, frozen=True):
    text: str
    start: float
    duration: float


class _Transcript(msgspec.Struct, frozen=True):
    snippets: list[_Snippet]
    language_code: str
    is_generated: bool


def canonical_url(video_id: str) -> str:
    """The watch URL of a video, as oEmbed and users know it."""
    return f"https://www.youtube.com/watch?v={video_id}"


async def fetch_video(
    client: httpx.AsyncClient,
    video_id: str,
    source_url: str,
    *,
    oembed_url: str,
    languages: list[str],
    transcript: str | None,
    transcript_http: requests.Session | None = None,
    transcript_total_s: float = TRANSCRIPT_TOTAL_S,
) -> fetched.Fetched:
    """Fetch a video's transcript (unless `transcript` is supplied) and its oEmbed title/channel.

    The transcript library is blocking; it runs in a worker thread with `transcript_http`
    (a requests.Session, used by one call at a time) or a fresh Session. oEmbed failures
    are not fatal: they are noted in `metadata["oembed_error"]`. Transcript failures raise
    PipelineError: SOURCE_NOT_FOUND when there is no transcript, FETCH_FAILED otherwise
    (also when the download takes over `transcript_total_s`; its thread then makes no new
    request, and stops reading the body under way by the same deadline).
    `source_url` is what the user submitted; the video itself is looked up by `video_id`.
    """
    metadata: dict[str, Any] = {
        "video_id": video_id,
        "canonical_url": canonical_url(video_id),
    }
    if transcript is not None:
        body = transcript.strip()
        metadata["transcript_source"] = "supplied"
    else:
        downloaded = await _download_transcript(
            video_id, languages, transcript_http, transcript_total_s
        )
        body = _paragraphs(downloaded.snippets)
        # A reprocess with a supplied transcript removes these keys (`insert_reprocess_job`).
        metadata["transcript_source"] = "youtube"
        metadata["language"] = downloaded.language_code
        metadata["transcript_generated"] = downloaded.is_generated
        if downloaded.snippets:
            metadata["duration"] = round(
                max(snippet.start + snippet.duration for snippet in downloaded.snippets), 3
            )
    if not body:
        raise errors.PipelineError("CONTENT_EMPTY", f"the transcript of video {video_id} is empty")
    title, details = await video_details(client, video_id, oembed_url=oembed_url)
    return fetched.Fetched(body=body, title=title, metadata=metadata | details)


async def video_details(
    client: httpx.AsyncClient, video_id: str, *, oembed_url: str
) -> tuple[str | None, dict[str, Any]]:
    """A video's title and its metadata from oEmbed: `channel`, or `oembed_error` saying why
    the lookup failed (never fatal)."""
    try:
        oembed = await _oembed(client, oembed_url, canonical_url(video_id))
    except _OEmbedFailed as exc:
        return None, {"oembed_error": str(exc)}
    return oembed.title, {"channel": oembed.author_name} if oembed.author_name else {}


class _OEmbedFailed(Exception):
    """The oEmbed lookup failed; the message says how (never fatal to the job)."""


async def _oembed(client: httpx.AsyncClient, oembed_url: str, watch_url: str) -> _OEmbed:
    """The video's title and channel, read within _OEMBED_TIMEOUT_S and _OEMBED_MAX_BYTES."""
    try:
        async with asyncio.timeout(_OEMBED_TIMEOUT_S):
            content = await _oembed_answer(client, oembed_url, watch_url)
    except TimeoutError as exc:
        raise _OEmbedFailed(f"oEmbed gave no answer within {_OEMBED_TIMEOUT_S:g} s") from exc
    # UnicodeError: a redirect to a host whose punycode does not decode (`xn--`), which idna
    # refuses only when httpx builds that request; ExceptionGroup: anyio's connect to a port
    # out of range (`:99999`), which httpx's URL parser lets through.
    except (
        httpx.HTTPError,
        httpx.InvalidURL,
        errors.InvalidInput,
        UnicodeError,
        ExceptionGroup,
    ) as exc:
        raise _OEmbedFailed(f"oEmbed request failed: {errors.describe(_first(exc))}") from exc
    try:
        oembed = msgspec.json.decode(content, type=_OEmbed)
    # RecursionError: valid JSON nested deeper than the decoder goes (64 KiB hold 32 000 levels);
    # UnicodeDecodeError: a string that is not UTF-8 (a Latin-1 `Café`).
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise _OEmbedFailed(f"oEmbed answer is not the expected JSON: {exc}") from exc
    return _OEmbed(
        title=fetched.one_line(oembed.title), author_name=fetched.one_line(oembed.author_name)
    )


def _first(exc: BaseException) -> BaseException:
    """The first exception inside an exception group (anyio's connect), else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _oembed_answer(client: httpx.AsyncClient, oembed_url: str, watch_url: str) -> bytes:
    async with client.stream(
        "GET",
        # Added to the configured URL's own query (a proxy's key, say): httpx's `params=`
        # would replace it.
        httpx.URL(oembed_url).copy_merge_params({"url": watch_url, "format": "json"}),
        headers={"accept-encoding": "identity"},  # the cap below is of the bytes themselves
        timeout=_OEMBED_TIMEOUT_S,
        follow_redirects=True,
    ) as response:
        if response.status_code != 200:
            raise _OEmbedFailed(f"oEmbed answered HTTP {response.status_code}")
        try:
            content, more = await bounded.body(response, _OEMBED_MAX_BYTES)
        except bounded.Undecodable as exc:
            raise _OEmbedFailed(f"oEmbed answer unreadable: {exc}") from exc
        if more:
            raise _OEmbedFailed(f"oEmbed answer is over {_OEMBED_MAX_BYTES // 1024} KiB")
        return content


async def _download_transcript(
    video_id: str, languages: list[str], http: requests.Session | None, total_s: float
) -> _Transcript:
    deadline = time.monotonic() + total_s
    try:
        async with asyncio.timeout(total_s):
            return await threads.in_daemon_thread(
                _download_blocking, video_id, list(languages), http, deadline
            )
    except TimeoutError:
        raise errors.PipelineError(
            "FETCH_FAILED", f"timed out after {total_s:g} s fetching the transcript of {video_id}"
        ) from None
    except _NOT_FOUND as exc:
        raise errors.PipelineError("SOURCE_NOT_FOUND", _not_found_message(exc, languages)) from exc
    except youtube_transcript_api.RequestBlocked as exc:
        # Its message's first line ends "due to one of the following reasons:".
        raise errors.PipelineError(
            "FETCH_FAILED",
            f"YouTube is blocking this machine's requests for video {video_id}"
            " (too many requests, or an address of a cloud provider)",
        ) from exc
    except youtube_transcript_api.CouldNotRetrieveTranscript as exc:
        # The library's own messages run to pages of advice; its cause line is what matters.
        cause = exc.cause.strip().splitlines()[0] if exc.cause.strip() else type(exc).__name__
        raise errors.PipelineError(
            "FETCH_FAILED", f"could not retrieve the transcript of video {video_id}: {cause}"
        ) from exc
    # requests counts an answer that is not JSON among its RequestExceptions: YouTube did
    # answer, so this is no network error.
    except requests.JSONDecodeError as exc:
        raise errors.PipelineError(
            "FETCH_FAILED",
            f"YouTube's answer about video {video_id} is not the expected JSON: {exc}",
        ) from exc
    except requests.RequestException as exc:
        raise errors.PipelineError(
            "FETCH_FAILED", f"network error fetching the transcript of video {video_id}: {exc}"
        ) from exc
    # The library parses YouTube's pages; whatever else it raises is a failed fetch.
    except Exception as exc:
        raise errors.PipelineError(
            "FETCH_FAILED",
            f"transcript library failed for video {video_id}: {type(exc).__name__}: {exc}",
        ) from exc


def _not_found_message(exc: Exception, languages: list[str]) -> str:
    video_id = getattr(exc, "video_id", "")
    match exc:
        case youtube_transcript_api.NoTranscriptFound():
            wanted = ", ".join(languages) or "(none)"
            return f"video {video_id} has no transcript in the languages {wanted}"
        case youtube_transcript_api.TranscriptsDisabled():
            return f"video {video_id} has transcripts disabled"
        case youtube_transcript_api.AgeRestricted():
            return f"video {video_id} is age-restricted; its transcript needs a login"
        case youtube_transcript_api.VideoUnplayable():
            return f"video {video_id} is unplayable: {exc.reason or 'no reason given'}"
        case _:
            return f"video {video_id} is unavailable"


def _download_blocking(
    video_id: str, languages: list[str], http: requests.Session | None, deadline: float
) -> _Transcript:
    """Runs in a worker thread: the library is synchronous and its Session not thread-safe.

    Every request the library sends is cut to what is left until `deadline` (monotonic), so
    the thread, which the caller stops waiting for then, ends by then too instead of holding
    a slot of the default executor for several more request timeouts.
    """
    session = http if http is not None else requests.Session()
    adapters = dict(session.adapters)
    for prefix, adapter in adapters.items():
        session.mount(prefix, _BoundedAdapter(adapter, deadline))
    try:
        api = youtube_transcript_api.YouTubeTranscriptApi(http_client=session)
        result = _find(api.list(video_id), languages).fetch()
        return _Transcript(
            snippets=[
                _Snippet(text=item.text, start=float(item.start), duration=float(item.duration))
                for item in result.snippets
            ],
            language_code=str(result.language_code),
            is_generated=bool(result.is_generated),
        )
    finally:
        if http is None:
            session.close()
        else:
            for prefix, adapter in adapters.items():
                session.mount(prefix, adapter)


def _find(
    transcripts: youtube_transcript_api.TranscriptList, languages: list[str]
) -> youtube_transcript_api.Transcript:
    """The transcript in the first of `languages` the video has. A language without a region
    (`en`) is followed by the video's regional ones (`en-GB`, `en-US`), which the library
    matches only exactly: a video captioned in `en-GB` alone had no transcript for `en`.
    Language tags match in any case (BCP 47): `pt-br` is the video's `pt-BR`."""
    available = [transcript.language_code for transcript in transcripts]
    wanted: list[str] = []
    for language in languages:
        same = [code for code in available if code.lower() == language.lower()]
        wanted += same or [language]
        if "-" not in language:
            prefix = language.lower() + "-"
            wanted += [code for code in available if code.lower().startswith(prefix)]
    return transcripts.find_transcript(wanted)


class _BoundedAdapter(requests.adapters.BaseAdapter):
    """Sends through `inner` with a timeout no longer than the time left until `deadline`
    (and at most _TRANSCRIPT_TIMEOUT_S: the transcript library sets none); past the
    deadline it sends nothing. The body is read here, a piece at a time as it arrives:
    requests' own timeout is per read, so a server dripping a byte at a time (or sending
    without end) would hold the thread and grow its memory for as long as it liked. Reading
    stops at the deadline (a silent server: one read timeout later) or past
    _TRANSCRIPT_MAX_BYTES. The status line and headers are read by `inner`, each read
    bounded by the timeout only: a server dripping its headers can hold the thread longer
    (the job still fails at the deadline)."""

    def __init__(self, inner: requests.adapters.BaseAdapter, deadline: float) -> None:
        super().__init__()
        self._inner = inner
        self._deadline = deadline

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise requests.Timeout("the transcript download's time is up")
        kwargs["timeout"] = min(left, _TRANSCRIPT_TIMEOUT_S)
        kwargs["stream"] = True
        response: requests.Response = self._inner.send(request, *args, **kwargs)
        raw = response.raw
        if not isinstance(raw, urllib3.response.BaseHTTPResponse):
            return response  # an answer already in memory (a test's adapter)
        body = bytearray()
        # A redirect's body is thrown away: as requests does, one that does not decode does
        # not stop the redirect.
        decode = not response.is_redirect
        try:
            while piece := raw.read1(_READ_BYTES, decode_content=decode):
                body += piece
                if len(body) > _TRANSCRIPT_MAX_BYTES:
                    raise requests.RequestException(
                        f"an answer is over {_TRANSCRIPT_MAX_BYTES // 2**20} MiB"
                    )
                if time.monotonic() > self._deadline:
                    raise requests.Timeout("the transcript download's time is up")
        except urllib3.exceptions.HTTPError as exc:
            response.close()
            raise _requests_error(exc) from exc
        except BaseException:
            response.close()
            raise
        # What requests itself does once it has read a body that was not streamed.
        response._content = bytes(body)
        response._content_consumed = True
        return response

    def close(self) -> None:
        self._inner.close()


def _requests_error(exc: urllib3.exceptions.HTTPError) -> requests.RequestException:
    """What requests raises for `exc` met while it reads a body itself (iter_content)."""
    match exc:
        case urllib3.exceptions.ProtocolError():
            return requests.exceptions.ChunkedEncodingError(exc)
        case urllib3.exceptions.DecodeError():
            return requests.exceptions.ContentDecodingError(exc)
        case urllib3.exceptions.ReadTimeoutError():
            return requests.ConnectionError(exc)
        case urllib3.exceptions.SSLError():
            return requests.exceptions.SSLError(exc)
        case _:
            return requests.RequestException(exc)


def _paragraphs(snippets: list[_Snippet]) -> str:
    """Join caption snippets into paragraphs, breaking at pauses and at sentence ends."""
    paragraphs: list[str] = []
    current: list[str] = []
    length = 0
    previous_end: float | None = None
    for snippet in snippets:
        text = " ".join(snippet.text.split())
        if not text:
            continue
        paused = previous_end is not None and snippet.start - previous_end >= _PARAGRAPH_PAUSE_S
        if current and paused:
            paragraphs.append(" ".join(current))
            current, length = [], 0
        current.append(text)
        length += len(text) + 1
        previous_end = snippet.start + snippet.duration
        sentence_done = length >= _PARAGRAPH_CHARS and text.endswith(_SENTENCE_END)
        if sentence_done or length >= 2 * _PARAGRAPH_CHARS:
            paragraphs.append(" ".join(current))
            current, length = [], 0
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)

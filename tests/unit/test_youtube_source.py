"""Fetching YouTube videos: transcripts through the transcript library, titles through oEmbed."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import pathlib
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
import requests
import requests.adapters
import requests.structures

from menos import errors
from menos.pipeline.sources import fetched, youtube
from tests.support import wire

VIDEO_ID = "dQw4w9WgXcQ"
OEMBED_URL = "http://oembed.test/oembed"
SOURCE_URL = f"https://youtu.be/{VIDEO_ID}"
API_KEY = "fake-innertube-key"

CAPTIONS_EN = """<?xml version="1.0" encoding="utf-8" ?><transcript>
<text start="0.0" dur="2.5">Hello and welcome</text>
<text start="2.5" dur="2.0">to the show,
everyone.</text>
<text start="10.0" dur="3.0">After a pause, a new thought &amp;amp; more.</text>
</transcript>"""

CAPTIONS_DE = """<?xml version="1.0" encoding="utf-8" ?><transcript>
<text start="0.0" dur="4.0">Hallo zusammen.</text>
</transcript>"""


def _track(language: str, name: str, *, generated: bool = False) -> dict[str, Any]:
    track: dict[str, Any] = {
        "baseUrl": f"https://www.youtube.com/api/timedtext?v={VIDEO_ID}&lang={language}",
        "name": {"runs": [{"text": name}]},
        "languageCode": language,
        "isTranslatable": False,
    }
    if generated:
        track["kind"] = "asr"
    return track


def _player(tracks: list[dict[str, Any]] | None) -> dict[str, Any]:
    player: dict[str, Any] = {"playabilityStatus": {"status": "OK"}}
    if tracks is not None:
        player["captions"] = {"playerCaptionsTracklistRenderer": {"captionTracks": tracks}}
    return player


class FakeYouTube(requests.adapters.BaseAdapter):
    """A requests adapter answering like YouTube's watch page, player API and caption files."""

    def __init__(
        self,
        *,
        player: Mapping[str, Any] | None = None,
        captions: Mapping[str, str] | None = None,
        watch_status: int = 200,
        fail_with: Exception | None = None,
        delay_s: float = 0.0,  # before the first answer
    ) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.player = player if player is not None else _player([_track("en", "English")])
        self.captions = captions if captions is not None else {"en": CAPTIONS_EN}
        self.watch_status = watch_status
        self.fail_with = fail_with
        self.calls: list[str] = []

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """Answer one request the way YouTube would."""
        url = urllib.parse.urlsplit(request.url or "")
        self.calls.append(f"{request.method} {url.path}")
        if len(self.calls) == 1:
            time.sleep(self.delay_s)  # a slow first answer (this runs in the library's thread)
        if self.fail_with is not None:
            raise self.fail_with
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/watch":
            page = f'<html><script>var cfg = {{"INNERTUBE_API_KEY": "{API_KEY}"}};</script></html>'
            return self._response(request, self.watch_status, page.encode())
        if url.path == "/youtubei/v1/player" and query.get("key") == [API_KEY]:
            return self._response(request, 200, json.dumps(self.player).encode())
        if url.path == "/api/timedtext":
            language = query["lang"][0]
            return self._response(request, 200, self.captions[language].encode())
        return self._response(request, 404, b"not found")

    def close(self) -> None:
        """Nothing to release."""

    @staticmethod
    def _response(request: requests.PreparedRequest, status: int, body: bytes) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response._content = body
        response.headers = requests.structures.CaseInsensitiveDict({"content-type": "text/plain"})
        response.encoding = "utf-8"
        response.url = request.url or ""
        response.request = request
        return response


def _session(fake: FakeYouTube) -> requests.Session:
    session = requests.Session()
    session.mount("https://", fake)
    session.mount("http://", fake)
    return session


def _oembed_client(
    response: httpx.Response | Exception | None = None, seen: list[httpx.Request] | None = None
) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if isinstance(response, Exception):
            raise response
        if response is not None:
            return response
        return httpx.Response(
            200,
            json={
                "title": "Never  Gonna Give You Up",
                "author_name": "Rick Astley",
                "type": "video",
            },
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def _fetch(
    fake: FakeYouTube | None = None,
    *,
    session: requests.Session | None = None,
    languages: list[str] | None = None,
    transcript: str | None = None,
    oembed: httpx.AsyncClient | None = None,
    total_s: float = youtube.TRANSCRIPT_TOTAL_S,
) -> fetched.Fetched:
    """The video fetched with the transcript from `fake`, or through `session` (closed after)."""
    session = session or _session(fake or FakeYouTube())
    async with oembed if oembed is not None else _oembed_client() as client:
        try:
            return await youtube.fetch_video(
                client,
                VIDEO_ID,
                SOURCE_URL,
                oembed_url=OEMBED_URL,
                languages=languages if languages is not None else ["en"],
                transcript=transcript,
                transcript_http=session,
                transcript_total_s=total_s,
            )
        finally:
            session.close()


async def test_transcript_title_and_channel_are_fetched() -> None:
    """A video yields its transcript as paragraphs, its title, channel and metadata."""
    seen: list[httpx.Request] = []
    fake = FakeYouTube()
    video = await _fetch(fake, oembed=_oembed_client(seen=seen))
    assert video.body == (
        "Hello and welcome to the show, everyone.\n\nAfter a pause, a new thought & more."
    )
    assert video.title == "Never Gonna Give You Up"
    assert video.metadata == {
        "video_id": VIDEO_ID,
        "canonical_url": f"https://www.youtube.com/watch?v={VIDEO_ID}",
        "channel": "Rick Astley",
        "language": "en",
        "transcript_generated": False,
        "duration": 13.0,
        "transcript_source": "youtube",
    }
    [request] = seen
    assert request.url.copy_with(query=None) == httpx.URL(OEMBED_URL)
    assert request.url.params["url"] == f"https://www.youtube.com/watch?v={VIDEO_ID}"
    assert request.url.params["format"] == "json"
    assert fake.calls[0] == "GET /watch"


async def test_language_preference_is_followed() -> None:
    """The first configured language that has a transcript is used."""
    fake = FakeYouTube(
        player=_player([_track("en", "English", generated=True), _track("de", "Deutsch")]),
        captions={"en": CAPTIONS_EN, "de": CAPTIONS_DE},
    )
    video = await _fetch(fake, languages=["fr", "de", "en"])
    assert video.body == "Hallo zusammen."
    assert video.metadata["language"] == "de"
    assert video.metadata["duration"] == 4.0


async def test_a_language_without_a_region_takes_a_regional_transcript() -> None:
    """A video captioned only in `en-GB` has an English transcript for `en`, in the order of
    preference; a language with a region takes only itself."""
    captions = {"en-GB": CAPTIONS_EN, "de": CAPTIONS_DE}
    fake = FakeYouTube(
        player=_player([_track("de", "Deutsch"), _track("en-GB", "English (UK)")]),
        captions=captions,
    )
    video = await _fetch(fake, languages=["en"])
    assert video.body.startswith("Hello and welcome")
    assert video.metadata["language"] == "en-GB"
    fake = FakeYouTube(
        player=_player([_track("de", "Deutsch"), _track("en-GB", "English (UK)")]),
        captions=captions,
    )
    assert (await _fetch(fake, languages=["de", "en"])).metadata["language"] == "de"
    fake = FakeYouTube(
        player=_player([_track("de", "Deutsch"), _track("en-GB", "English (UK)")]),
        captions=captions,
    )
    assert (await _fetch(fake, languages=["en", "de"])).metadata["language"] == "en-GB"
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(
            FakeYouTube(player=_player([_track("en-GB", "English (UK)")]), captions=captions),
            languages=["en-US"],
        )
    assert caught.value.code == "SOURCE_NOT_FOUND"


@pytest.mark.parametrize(
    ("wanted", "track"), [("pt-br", "pt-BR"), ("EN", "en"), ("zh-hans", "zh-Hans")]
)
async def test_a_language_matches_the_videos_in_any_case(wanted: str, track: str) -> None:
    """MENOS_YOUTUBE_LANGUAGES=pt-br takes a video's `pt-BR` transcript: language tags have no
    case (BCP 47), and the job does not fail SOURCE_NOT_FOUND for a video that has one."""
    fake = FakeYouTube(player=_player([_track(track, "Captions")]), captions={track: CAPTIONS_EN})
    video = await _fetch(fake, languages=[wanted])
    assert video.body.startswith("Hello and welcome")
    assert video.metadata["language"] == track


async def test_no_transcript_in_wanted_languages_is_source_not_found() -> None:
    """A video without a transcript in the configured languages fails with SOURCE_NOT_FOUND."""
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(), languages=["fr", "es"])
    assert caught.value.code == "SOURCE_NOT_FOUND"
    assert "fr, es" in caught.value.message
    assert len(caught.value.message) < 200


async def test_transcripts_disabled_is_source_not_found() -> None:
    """A video with captions turned off fails with SOURCE_NOT_FOUND."""
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(player=_player(None)))
    assert caught.value.code == "SOURCE_NOT_FOUND"
    assert "disabled" in caught.value.message


async def test_unavailable_video_is_source_not_found() -> None:
    """A removed or private video fails with SOURCE_NOT_FOUND."""
    player = {"playabilityStatus": {"status": "ERROR", "reason": "This video is unavailable"}}
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(player=player))
    assert caught.value.code == "SOURCE_NOT_FOUND"
    assert VIDEO_ID in caught.value.message


@pytest.mark.parametrize("status", [500, 429])
async def test_youtube_http_errors_are_fetch_failed(status: int) -> None:
    """YouTube answering with an error or blocking us fails with FETCH_FAILED."""
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(watch_status=status))
    assert caught.value.code == "FETCH_FAILED"
    assert len(caught.value.message) <= 500


@pytest.mark.parametrize(
    "fake",
    [
        FakeYouTube(watch_status=429),
        FakeYouTube(
            player={
                "playabilityStatus": {
                    "status": "LOGIN_REQUIRED",
                    "reason": "Sign in to confirm you’re not a bot",
                }
            }
        ),
    ],
)
async def test_a_block_by_youtube_is_told_in_a_whole_sentence(fake: FakeYouTube) -> None:
    """Blocked by YouTube (429 or its bot check), the job says so, not "one of the following
    reasons:" with the reasons cut off."""
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(fake)
    assert caught.value.code == "FETCH_FAILED"
    assert "blocking" in caught.value.message
    assert not caught.value.message.endswith(":")


async def test_network_error_is_fetch_failed() -> None:
    """A network failure reaching YouTube fails with FETCH_FAILED."""
    fake = FakeYouTube(fail_with=requests.ConnectionError("network is unreachable"))
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(fake)
    assert caught.value.code == "FETCH_FAILED"
    assert "network is unreachable" in caught.value.message


async def test_a_slow_transcript_download_is_fetch_failed_in_time() -> None:
    """The library makes several requests, each with its own timeout; the whole download is
    bounded too."""
    started = time.monotonic()
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(delay_s=3.0), total_s=0.2)
    assert caught.value.code == "FETCH_FAILED"
    assert "timed out after 0.2 s" in caught.value.message
    assert time.monotonic() - started < 2.5  # before even the first of the slow answers


async def test_a_timed_out_download_sends_no_further_request() -> None:
    """Once the download's time is up its thread sends nothing more: it ends instead of
    holding an executor thread for the library's remaining requests."""
    fake = FakeYouTube(delay_s=0.6)
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(fake, total_s=0.2)
    assert caught.value.code == "FETCH_FAILED"
    # Wait for the download's thread to end.
    for thread in threading.enumerate():
        if thread.name == "menos-_download_blocking":
            await asyncio.to_thread(thread.join, 5.0)
    assert fake.calls == ["GET /watch"]


_STOPPING_PROCESS = """
import asyncio, sys
from menos import errors
from tests.unit import test_youtube_source as t

async def main():
    try:
        await t._fetch(t.FakeYouTube(delay_s=float(sys.argv[1])), total_s=0.2)
    except errors.PipelineError as exc:
        print(exc.code, flush=True)

asyncio.run(main())
"""


def test_a_process_ending_during_a_timed_out_download_does_not_wait_for_it() -> None:
    """A worker that stops while a transcript download is under way exits once its loop ends:
    the download's thread (which YouTube may hold for up to the download's deadline) does not
    keep the process alive after its jobs were given back."""
    # YouTube's first answer takes an hour; the process ends long before (or the run times out).
    done = subprocess.run(
        [sys.executable, "-c", _STOPPING_PROCESS, "3600"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
        cwd=pathlib.Path(__file__).parents[2],  # where `tests` is importable
    )
    assert done.stdout.strip() == "FETCH_FAILED"


async def test_unexpected_youtube_answer_is_fetch_failed() -> None:
    """A player answer the library cannot read fails with FETCH_FAILED, not a crash."""
    broken = _player([{"bad": 1}])
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(player=broken))
    assert caught.value.code == "FETCH_FAILED"


class _PlayerNotJson(FakeYouTube):
    """YouTube answering its player API with an HTML page instead of JSON."""

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """The watch page as usual; the player API's answer is not JSON."""
        if "/youtubei/" in (request.url or ""):
            return self._response(request, 200, b"<html>Sorry, something went wrong</html>")
        return super().send(request, *args, **kwargs)


async def test_a_player_answer_that_is_not_json_is_no_network_error() -> None:
    """YouTube did answer: the failure says its answer was not JSON, not that the network
    failed."""
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(_PlayerNotJson())
    assert caught.value.code == "FETCH_FAILED"
    assert "network error" not in caught.value.message
    assert "not the expected JSON" in caught.value.message


async def test_supplied_transcript_skips_the_download() -> None:
    """A supplied transcript is used as is and YouTube is not asked for one."""
    fake = FakeYouTube()
    video = await _fetch(fake, transcript="  My own transcript.\n\nSecond part.  ")
    assert fake.calls == []
    assert video.body == "My own transcript.\n\nSecond part."
    assert video.title == "Never Gonna Give You Up"
    assert video.metadata["transcript_source"] == "supplied"
    assert "language" not in video.metadata
    assert "duration" not in video.metadata


async def test_blank_supplied_transcript_is_content_empty() -> None:
    """A blank supplied transcript fails with CONTENT_EMPTY rather than storing nothing."""
    with pytest.raises(errors.PipelineError) as caught:
        await _fetch(FakeYouTube(), transcript="   ")
    assert caught.value.code == "CONTENT_EMPTY"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(404, text="Not Found"), "HTTP 404"),
        (httpx.Response(200, text="<html>not json</html>"), "JSON"),
        (httpx.Response(200, json={"title": 5}), "JSON"),
        # Valid JSON under the size cap, nested deeper than the decoder goes.
        (httpx.Response(200, content=b'{"x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"), "JSON"),
        (httpx.ConnectError("refused"), "ConnectError"),
        # A Latin-1 title: msgspec raises UnicodeDecodeError, which failed the whole job.
        (httpx.Response(200, content=b'{"title": "Caf\xe9"}'), "JSON"),
        (httpx.ReadError(""), "oEmbed request failed: ReadError"),
    ],
)
async def test_oembed_failure_is_not_fatal(answer: httpx.Response | Exception, reason: str) -> None:
    """Without oEmbed the video still gets its transcript; the reason is noted in metadata."""
    video = await _fetch(FakeYouTube(), oembed=_oembed_client(answer))
    assert video.body.startswith("Hello and welcome")
    assert video.title is None
    assert "channel" not in video.metadata
    assert reason in video.metadata["oembed_error"]
    assert not video.metadata["oembed_error"].rstrip().endswith(":")


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://xn--/oembed", "IDNAError"),  # punycode that does not decode
        ("http://127.0.0.1:99999/oembed", "port must be 0-65535"),
    ],
)
async def test_an_oembed_redirect_to_a_url_that_cannot_be_requested_is_not_fatal(
    location: str, reason: str
) -> None:
    """oEmbed redirecting to a malformed host or port fails the lookup, not the video's job."""

    def redirect(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("location", location)
        handler.send_header("content-length", "0")
        handler.end_headers()

    server = _serve_youtube(redirect)
    try:
        async with httpx.AsyncClient() as client:
            video = await youtube.fetch_video(
                client,
                VIDEO_ID,
                SOURCE_URL,
                oembed_url=f"http://127.0.0.1:{server.server_address[1]}/oembed",
                languages=["en"],
                transcript="My own transcript.",
            )
    finally:
        server.shutdown()
        server.server_close()
    assert video.body == "My own transcript."
    assert video.title is None
    assert reason in video.metadata["oembed_error"]


async def test_the_oembed_urls_own_query_is_kept() -> None:
    """A MENOS_YOUTUBE_OEMBED_URL with a query (a proxy's key) is asked with that query too."""
    seen: list[httpx.Request] = []
    async with _oembed_client(seen=seen) as client:
        video = await youtube.fetch_video(
            client,
            VIDEO_ID,
            SOURCE_URL,
            oembed_url=f"{OEMBED_URL}?key=abc&maxwidth=200",
            languages=["en"],
            transcript="My own transcript.",
        )
    assert video.title == "Never Gonna Give You Up"
    [request] = seen
    assert request.url.params["key"] == "abc"
    assert request.url.params["maxwidth"] == "200"
    assert request.url.params["url"] == f"https://www.youtube.com/watch?v={VIDEO_ID}"
    assert request.url.params["format"] == "json"


class _Dripping(httpx.AsyncByteStream):
    """An answer that sends a byte now and then, forever (or `total` bytes at once)."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.total is not None:
            yield b'{"title": "' + b"x" * self.total + b'"}'
            return
        while True:
            yield b" "
            await asyncio.sleep(0.05)  # the slow server's pace


async def test_an_oembed_answer_is_bounded_in_size_and_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A huge oEmbed answer is not read past 64 KiB, and one that drips never ends is given
    up on the whole lookup's timeout: the video keeps its transcript, without a title."""
    huge = await _fetch(
        FakeYouTube(), oembed=_oembed_client(httpx.Response(200, stream=_Dripping(10**8)))
    )
    assert huge.title is None and "64 KiB" in huge.metadata["oembed_error"]
    monkeypatch.setattr(youtube, "_OEMBED_TIMEOUT_S", 0.3)
    slow = await _fetch(
        FakeYouTube(), oembed=_oembed_client(httpx.Response(200, stream=_Dripping()))
    )
    assert slow.title is None and "within 0.3 s" in slow.metadata["oembed_error"]


async def test_an_oembed_answer_compressed_unasked_is_capped_before_it_is_inflated() -> None:
    """An oEmbed answer gzipped although asked for identity (64 MiB of spaces in 64 KB)
    stops at 64 KiB with memory near that: httpx inflated each network read whole."""
    bomb = gzip.compress(b" " * (64 * 2**20), compresslevel=9)
    answer = httpx.Response(200, headers={"content-encoding": "gzip"}, stream=wire.Wire(bomb))
    tracemalloc.start()
    try:
        video = await _fetch(FakeYouTube(), oembed=_oembed_client(answer))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert video.title is None and "64 KiB" in video.metadata["oembed_error"]
    assert peak < 8 * 2**20, peak


async def test_a_long_oembed_title_is_cut_to_the_title_limit() -> None:
    named = await _fetch(
        FakeYouTube(),
        oembed=_oembed_client(
            httpx.Response(200, json={"title": "t" * 2000, "author_name": "a" * 2000})
        ),
    )
    assert named.title == "t" * fetched.TITLE_MAX_CHARS
    assert named.metadata["channel"] == "a" * fetched.TITLE_MAX_CHARS


async def test_an_oembed_title_loses_its_control_characters() -> None:
    """A terminal escape in a video's title or channel (`menos content list` prints them) is
    dropped, and a control character between words leaves one space."""
    named = await _fetch(
        FakeYouTube(),
        oembed=_oembed_client(
            httpx.Response(
                200,
                json={"title": "\x1b[2J\x1b[31mRed\x07 \x00 talk\x9b", "author_name": "\x08Chan"},
            )
        ),
    )
    assert (named.title, named.metadata["channel"]) == ("[2J[31mRed talk", "Chan")


async def test_long_transcripts_are_split_into_paragraphs() -> None:
    """A long unbroken transcript is split at sentence ends into readable paragraphs."""
    sentence = "This sentence is part of a long talk without pauses between captions."
    lines = "\n".join(
        f'<text start="{index * 3}.0" dur="3.0">{sentence}</text>' for index in range(40)
    )
    fake = FakeYouTube(captions={"en": f"<transcript>{lines}</transcript>"})
    video = await _fetch(fake)
    paragraphs = video.body.split("\n\n")
    assert len(paragraphs) > 3
    assert all(paragraph.endswith(".") for paragraph in paragraphs)
    assert all(len(paragraph) <= 1000 for paragraph in paragraphs)
    assert video.metadata["duration"] == 120.0


class _Hostile:
    """A server on 127.0.0.1 answering every request with a 200 whose body never ends:
    `flood` sends 64 MiB at once then drips, else it drips a byte every 50 ms. Records how
    much it sent and whether the client hung up."""

    def __init__(self, *, flood: bool) -> None:
        self.flood = flood
        self.sent = 0
        self.hung_up = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
                if self.flood:
                    block = b"x" * 65536
                    for _ in range(1024):
                        conn.sendall(block)
                        self.sent += len(block)
                for _ in range(300):  # at most 15 s: a client that never hangs up
                    conn.sendall(b"x")
                    self.sent += 1
                    time.sleep(0.05)  # the dripping server's pace
            except OSError:
                self.hung_up.set()

    def close(self) -> None:
        self.listener.close()


class _ToLocal(requests.adapters.HTTPAdapter):
    """Sends the library's requests to a local server instead of YouTube."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        url = urllib.parse.urlsplit(request.url or "")
        request.url = url._replace(scheme="http", netloc=f"127.0.0.1:{self.port}").geturl()
        return super().send(request, *args, **kwargs)


@pytest.mark.parametrize("flood", [False, True])
async def test_a_transcript_answer_that_never_ends_is_abandoned(flood: bool) -> None:
    """A YouTube answer that drips forever, or floods, fails the download within its time,
    and its thread stops reading then: it does not keep an executor thread (shared with
    DNS lookups and page extraction) and its growing body for as long as the server likes."""
    server = _Hostile(flood=flood)
    try:
        with pytest.raises(errors.PipelineError) as caught:
            await _fetch_from_local(server.port, total_s=2.0)
        assert caught.value.code == "FETCH_FAILED"
        hung_up = await asyncio.to_thread(server.hung_up.wait, 5.0)
        assert hung_up, f"still reading after {server.sent} bytes"
        assert server.sent < 40 * 2**20
    finally:
        server.close()


async def test_a_transcript_is_read_over_a_real_connection_gzipped_and_chunked() -> None:
    """The library's answers read as they arrive are whole: gzip over small chunks."""
    fake = FakeYouTube()

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        asked = requests.Request(handler.command, f"https://www.youtube.com{handler.path}")
        body = gzip.compress(fake.send(asked.prepare()).content)
        handler.send_response(200)
        handler.send_header("content-encoding", "gzip")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        for start in range(0, len(body), 7):
            piece = body[start : start + 7]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    server = _serve_youtube(answer)
    video = await _fetch_through(server)
    assert video.body.startswith("Hello and welcome to the show, everyone.\n\nAfter a pause")
    assert fake.calls == ["GET /watch", "POST /youtubei/v1/player", "GET /api/timedtext"]


def _serve_youtube(answer: Any) -> http.server.ThreadingHTTPServer:
    """A local server whose handler's GETs and POSTs are answered by `answer(handler)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            answer(self)

        do_POST = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _fetch_through(server: http.server.ThreadingHTTPServer) -> fetched.Fetched:
    """The video fetched with its transcript downloaded from `server`, shut down after."""
    try:
        return await _fetch_from_local(server.server_address[1], total_s=10.0)
    finally:
        server.shutdown()
        server.server_close()


async def _fetch_from_local(port: int, *, total_s: float) -> fetched.Fetched:
    """The video fetched with its transcript downloaded from a server on 127.0.0.1:`port`."""
    session = requests.Session()
    session.mount("https://", _ToLocal(port))
    return await _fetch(session=session, total_s=total_s)


async def test_a_connection_broken_mid_answer_is_a_network_error() -> None:
    """A transcript answer cut short by the server fails as the network error it is, not
    as a failure of the transcript library."""

    def cut_short(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-length", "1000")
        handler.end_headers()
        handler.wfile.write(b"<html>")
        handler.close_connection = True

    with pytest.raises(errors.PipelineError) as caught:
        await _fetch_through(_serve_youtube(cut_short))
    assert caught.value.code == "FETCH_FAILED"
    assert caught.value.message.startswith(
        f"network error fetching the transcript of video {VIDEO_ID}: "
    ), caught.value.message


async def test_a_redirect_whose_body_does_not_decode_is_still_followed() -> None:
    """A redirect labelled gzip with a plain body (its body is never read) still leads to
    the transcript, as it did when requests read the answers itself."""
    fake = FakeYouTube()
    redirected: list[str] = []

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        if not redirected:
            redirected.append(handler.path)
            handler.send_response(302)
            handler.send_header("location", f"https://www.youtube.com{handler.path}")
            handler.send_header("content-encoding", "gzip")
            handler.send_header("content-length", "5")
            handler.end_headers()
            handler.wfile.write(b"Found")
            return
        asked = requests.Request(handler.command, f"https://www.youtube.com{handler.path}")
        body = fake.send(asked.prepare()).content
        handler.send_response(200)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    video = await _fetch_through(_serve_youtube(answer))
    assert video.body.startswith("Hello and welcome to the show, everyone.")
    assert redirected == [f"/watch?v={VIDEO_ID}"]

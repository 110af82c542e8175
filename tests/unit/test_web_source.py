"""Fetching web pages: readable text, decoding, redirects, size cap, SSRF per hop, error codes."""

from __future__ import annotations

import asyncio
import codecs
import gzip
import importlib.util
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine

import httpx
import pytest
import trafilatura

from menos import errors
from menos.pipeline import analyzers, ssrf
from menos.pipeline.analyzers.builtin import BuiltinAnalyzer
from menos.pipeline.sources import fetched, web
from tests.support import wire
from tests.support.http_network import HandlerNetwork

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)

PUBLIC = "http://93.184.215.14"
MAX = 5 * 1024 * 1024

ARTICLE = """<!doctype html>
<html><head>
<title>Plain Title | Example Site</title>
<meta property="og:title" content="The Real Headline">
<script>var tracking = "SCRIPT-NOISE";</script>
<style>.x { color: red }</style>
</head><body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<article>
<h1>The Real Headline</h1>
<p>Menos keeps the readable part of a page: this first paragraph explains the idea in
enough words that an extractor recognises it as the main content of the document.</p>
<p>A second paragraph adds more detail, so the article has a body worth summarising
later in the pipeline, well beyond a single short line of text.</p>
</article>
<footer>Copyright notice</footer>
</body></html>"""


def _client(handler: Handler, *, pinned: bool = False) -> httpx.AsyncClient:
    """A client answered by `handler`; `pinned` puts the SSRF checks of every connection
    (`ssrf.PinnedTransport`) between the two."""
    transport: httpx.AsyncBaseTransport = (
        ssrf.PinnedTransport(allow_private=False, network=HandlerNetwork(handler))
        if pinned
        else httpx.MockTransport(handler)
    )
    # as the worker's: no cookie jar of its own
    return httpx.AsyncClient(transport=transport, follow_redirects=False, cookies=ssrf.no_cookies())


def _html(body: str | bytes, content_type: str = "text/html; charset=utf-8") -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.Response(200, headers={"content-type": content_type}, content=content)


async def _fetch_error(
    handler: Handler,
    url: str = f"{PUBLIC}/",
    *,
    pinned: bool = False,
    max_bytes: int = MAX,
    timeout_s: float = 10.0,
) -> errors.PipelineError:
    async with _client(handler, pinned=pinned) as client:
        with pytest.raises(errors.PipelineError) as caught:
            await web.fetch_page(client, url, max_bytes=max_bytes, timeout_s=timeout_s)
    return caught.value


async def test_html_page_becomes_readable_text_with_title_and_metadata() -> None:
    """An article page yields its paragraphs (no scripts or menus), its headline and metadata."""
    async with _client(lambda request: _html(ARTICLE)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/article", max_bytes=MAX)
    assert "first paragraph explains the idea" in page.body
    assert "A second paragraph adds more detail" in page.body
    assert "SCRIPT-NOISE" not in page.body
    assert "color: red" not in page.body
    assert page.title == "The Real Headline"
    assert page.metadata == {
        "final_url": f"{PUBLIC}/article",
        "status_code": 200,
        "content_type": "text/html",
        "bytes": len(ARTICLE.encode()),
    }


async def _fetched(page_html: str) -> fetched.Fetched:
    """`page_html` as the fetch stage reads it."""
    async with _client(lambda request: _html(page_html)) as client:
        return await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)


async def test_a_pages_headings_paragraphs_and_lists_stay_apart() -> None:
    """A heading is not run into the paragraph after it, paragraphs stay paragraphs and
    emphasis gets no markers: the summary's sentences and the structure measure of the score
    (headings, list items, paragraphs) see the page as it reads."""
    page_html = (
        "<html><head><title>Queues</title></head><body><article>"
        "<h1>Why queues matter</h1><p>A job queue hands <b>slow</b> work to a worker.</p>"
        "<h2>Durability</h2><p>PostgreSQL holds the queue in rows.</p>"
        "<ul><li>Leases expire.</li><li>Heartbeats renew them.</li></ul>"
        "</article></body></html>"
    )
    page = await _fetched(page_html)
    assert page.body.split("\n\n") == [
        "# Why queues matter",
        "A job queue hands slow work to a worker.",
        "## Durability",
        "PostgreSQL holds the queue in rows.",
        "- Leases expire.\n- Heartbeats renew them.",
    ]
    answer = BuiltinAnalyzer().analyze_text(
        analyzers.Request(
            text=page.body, title=page.title, content_type="web", tags=[], vocabulary=[]
        )
    )
    assert "Structure: 2 headings, 2 list items," in " ".join(answer["score_explanation"])


async def test_inline_markup_leaves_no_markers_in_a_pages_text() -> None:
    """Subscripts, struck-out and keyboard text read as a browser shows them: no literal
    `<sub>` tags, `~~` or backticks in the text the analyzers see (`H2O`, not `H<sub>2</sub>O`)."""
    page_html = (
        "<html><head><title>Water</title></head><body><article><h1>Water</h1>"
        "<p>Water is H<sub>2</sub>O and energy is mc<sup>2</sup>. It cost <del>ten</del> "
        "<s>nine</s> <strike>eight</strike> dollars; press <kbd>Enter</kbd> to set "
        "<var>x</var> in <tt>tty</tt>, <samp>ok</samp>.</p></article></body></html>"
    )
    assert (await _fetched(page_html)).body.split("\n\n") == [
        "# Water",
        "Water is H2O and energy is mc2. It cost ten nine eight dollars; press Enter to set "
        "x in tty, ok.",
    ]


async def test_title_falls_back_to_the_title_tag() -> None:
    """A page without og:title still gets its <title>."""
    page_html = (
        "<html><head><title> My   Notes </title></head><body><p>Some text.</p></body></html>"
    )
    async with _client(lambda request: _html(page_html)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.title == "My Notes"
    assert "Some text." in page.body


@pytest.mark.parametrize(
    ("head", "body", "title"),
    [
        # trafilatura cut the <title> at " | " and skipped the part holding a "."
        ("<title>Python 3.12 released | Blog</title>", "", "Python 3.12 released | Blog"),
        # a heading no browser shows beat the <title>
        (
            "<title>Real title</title>",
            "<noscript><h1>Enable JavaScript</h1></noscript>",
            "Real title",
        ),
        (
            "",
            "<noscript><h1>Enable JavaScript</h1></noscript><h1>Shown heading</h1>",
            "Shown heading",
        ),
        (
            '<title>Site | Post</title><meta property="og:title" content=" The  Post ">',
            "",
            "The Post",
        ),
        # an icon's <title> is its tooltip, not the page's
        ("", "<svg><title>Close</title></svg><h1>Shown heading</h1>", "Shown heading"),
        ("<title> </title>", "<svg><title>Menu</title></svg><h1>Heading</h1>", "Heading"),
        ("<noscript><title>Enable JavaScript</title></noscript><title>Real</title>", "", "Real"),
    ],
)
async def test_the_title_is_the_pages_own_whole_title(head: str, body: str, title: str) -> None:
    """og:title, else the whole <title> (as a browser tab shows it, and as a page too large
    for the parser gets it), else the first <h1> a browser shows."""
    page_html = (
        f"<html><head>{head}</head><body>{body}<article><p>{'Queues hold work. ' * 20}</p>"
        "</article></body></html>"
    )
    assert (await _fetched(page_html)).title == title


def test_the_first_shown_heading_is_found_in_linear_time() -> None:
    """Looking up each heading's ancestors took 23 s on 95,000 headings under 250 elements
    in a <noscript> (a page under the parser's size limit)."""
    page = "<html><body><noscript>" + "<div>" * 250 + "<h1>a</h1>" * 40_000 + "</body></html>"
    tree = trafilatura.load_html(page)
    started = time.process_time()
    assert web._page_title(tree) is None
    assert time.process_time() - started < 5  # 23 s when each heading looked up its ancestors


async def test_tag_strip_fallback_when_extractor_finds_nothing() -> None:
    """A page whose only text the extractor discards still yields that text."""
    page_html = "<html><body><footer>Only footer text &amp; nothing else</footer></body></html>"
    async with _client(lambda request: _html(page_html)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "Only footer text & nothing else"


async def test_plain_text_is_taken_as_is() -> None:
    """A text/plain page is stored verbatim, even when it looks like markup."""
    text = "Line one <b>not html</b>\n\nLine two"
    async with _client(lambda request: _html(text, "text/plain")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/notes.txt", max_bytes=MAX)
    assert page.body == text
    assert page.title is None
    assert page.metadata["content_type"] == "text/plain"


async def test_markdown_is_taken_as_is_with_its_heading_as_title() -> None:
    """A text/markdown page keeps its markdown, and its first heading becomes the title."""
    text = "# Release notes\n\n- **fast** now\n- [docs](https://example.com)\n"
    async with _client(lambda request: _html(text, "text/markdown; charset=utf-8")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/README.md", max_bytes=MAX)
    assert page.body == text.strip()
    assert page.title == "Release notes"


async def test_response_charset_is_honoured() -> None:
    """A Latin-1 page declared in its Content-Type reads correctly."""
    body = "Un café très crème".encode("iso-8859-1")
    async with _client(lambda request: _html(body, "text/plain; charset=ISO-8859-1")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "Un café très crème"


async def test_meta_charset_is_honoured_when_header_has_none() -> None:
    """An HTML page declaring windows-1252 in a <meta> tag reads correctly."""
    page_html = '<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 “quotes”</p>'
    body = page_html.encode("windows-1252")
    async with _client(lambda request: _html(body, "text/html")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert "Café “quotes”" in page.body


@pytest.mark.parametrize(
    "header", ["text/html; charset=", "text/html; charset=none", "text/html; charset=utf-7"]
)
async def test_a_header_charset_naming_no_encoding_leaves_the_meta_charset_to_decide(
    header: str,
) -> None:
    """A Content-Type whose charset names no page encoding (empty, `none`, UTF-7) is no
    label, as browsers read it: the page's <meta charset> decides, and Shift_JIS text is
    not stored as noise."""
    body = '<meta charset="shift_jis"><p>日本語の文章です。</p>'.encode("cp932")
    async with _client(lambda request: _html(body, header)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "日本語の文章です。"


@pytest.mark.parametrize("declared", ["utf-16", "UTF-16LE", "utf-16be", "utf-32"])
async def test_a_meta_charset_of_utf_16_or_32_is_read_as_utf_8(declared: str) -> None:
    """A <meta> tag can only be read because the page is ASCII-compatible: one naming
    UTF-16 or UTF-32 is wrong, and browsers read UTF-8 (the page is not made CJK noise)."""
    page_html = f'<html><head><meta charset="{declared}"></head><body><p>Café ok</p>'
    async with _client(lambda request: _html(page_html.encode(), "text/html")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert "Café ok" in page.body


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("Un café, ça va.".encode("utf-16"), "text/plain"),  # Python writes a BOM first
        (codecs.BOM_UTF16_BE + "Un café, ça va.".encode("utf-16-be"), "text/plain"),
        (codecs.BOM_UTF16_LE + "Un café, ça va.".encode("utf-16-le"), "text/html"),
        (codecs.BOM_UTF8 + "Un café, ça va.".encode(), "text/plain; charset=iso-8859-1"),
        ("Un café, ça va.".encode("utf-32"), "text/plain; charset=utf-32"),  # LE mark: FF FE 00 00
        (codecs.BOM_UTF32_BE + "Un café, ça va.".encode("utf-32-be"), "text/plain"),
    ],
    ids=[
        "utf-16",
        "utf-16-be",
        "utf-16-le-html",
        "utf-8-over-header-charset",
        "utf-32-le",
        "utf-32-be",
    ],
)
async def test_a_byte_order_mark_decides_the_encoding(body: bytes, content_type: str) -> None:
    """A page starting with a UTF-8, UTF-16 or UTF-32 byte-order mark is decoded as it says."""
    async with _client(lambda request: _html(body, content_type)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "Un café, ça va."


async def test_an_xhtml_page_is_read_in_the_encoding_its_xml_declaration_names() -> None:
    """application/xhtml+xml is read by an XML parser, which takes the encoding from the
    declaration in the first line (`<?xml version="1.0" encoding="Shift_JIS"?>`)."""
    page = (
        '<?xml version="1.0" encoding="Shift_JIS"?>'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>日本語のタイトル</title></head>'
        "<body><div><p>" + "これは日本語の記事です。" * 20 + "</p></div></body></html>"
    ).encode("shift_jis")
    response = httpx.Response(200, headers={"content-type": "application/xhtml+xml"}, content=page)
    async with _client(lambda request: response) as client:
        fetched = await web.fetch_page(client, PUBLIC + "/", max_bytes=MAX)
    assert fetched.title == "日本語のタイトル"
    assert "これは日本語の記事です。" in fetched.body


@pytest.mark.parametrize("label", ["UTF-16", "utf-32le"])
async def test_an_xml_declaration_naming_utf_16_in_ascii_bytes_is_read_as_utf_8(label: str) -> None:
    """A declaration readable as ASCII cannot be right about UTF-16 or UTF-32 (a serializer's
    string written out as UTF-8): the page is read as UTF-8, as one naming it in <meta> is."""
    page = (
        f'<?xml version="1.0" encoding="{label}"?><html xmlns="http://www.w3.org/1999/xhtml">'
        "<body><p>Café, déjà vu.</p></body></html>"
    )
    headers = {"content-type": "application/xhtml+xml"}
    response = httpx.Response(200, headers=headers, content=page.encode())
    async with _client(lambda request: response) as client:
        fetched = await web.fetch_page(client, PUBLIC + "/", max_bytes=MAX)
    assert "Café, déjà vu." in fetched.body


async def test_an_xml_declaration_in_a_text_html_page_is_not_its_charset() -> None:
    """An HTML parser ignores an XML declaration (WHATWG): a text/html page is read as
    before, by its bytes."""
    page = (
        '<?xml version="1.0" encoding="Shift_JIS"?><html><body><p>Café, déjà vu.</p></body></html>'
    )
    response = httpx.Response(200, headers={"content-type": "text/html"}, content=page.encode())
    async with _client(lambda request: response) as client:
        fetched = await web.fetch_page(client, PUBLIC + "/", max_bytes=MAX)
    assert "Café, déjà vu." in fetched.body


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", ""])
async def test_a_legacy_page_without_a_charset_is_read_as_windows_1252(content_type: str) -> None:
    """Bytes that are not UTF-8 and declare nothing are read as browsers read them, not as
    U+FFFD: windows-1252 (Latin-1 with printable 0x80-0x9F)."""
    body = "<p>Un café “crème” à 5 €, naïve.</p>".encode("windows-1252")
    headers = {"content-type": content_type} if content_type else {}
    async with _client(lambda request: httpx.Response(200, content=body, headers=headers)) as c:
        page = await web.fetch_page(c, f"{PUBLIC}/", max_bytes=MAX)
    assert "Un café “crème” à 5 €, naïve." in page.body


@pytest.mark.parametrize("charset", ["ISO-8859-1", "latin1", "us-ascii"])
async def test_latin_1_and_ascii_labels_mean_windows_1252(charset: str) -> None:
    """As in browsers: a page labelled Latin-1 or ASCII that uses 0x80-0x9F means
    windows-1252's quotes and euro sign, not control characters."""
    body = "“Prix” 5 € — café".encode("windows-1252")
    async with _client(lambda request: _html(body, f"text/plain; charset={charset}")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "“Prix” 5 € — café"


@pytest.mark.parametrize("in_meta", [False, True], ids=["header", "meta"])
@pytest.mark.parametrize(
    ("charset", "codec", "text"),
    [
        ("gb2312", "gbk", "朱镕基总理"),
        ("Shift_JIS", "cp932", "①髙橋さん"),
        ("windows-31j", "cp932", "①髙橋さん"),
        ("euc-kr", "cp949", "똠방각하"),
        ("big5", "big5hkscs", "冇問題㗎"),
        ("iso-8859-9", "cp1254", "“Türkçe” €"),
        ("tis-620", "cp874", "“ภาษาไทย”"),
    ],
)
async def test_legacy_labels_are_read_as_browsers_read_them(
    charset: str, codec: str, text: str, in_meta: bool
) -> None:
    """A page labelled gb2312, Shift_JIS, euc-kr, … reads as in a browser, which decodes
    those labels as their supersets (GBK, Windows' code pages): no U+FFFD in the text."""
    body = f"<p>{text}</p>".encode(codec)
    if in_meta:
        body = f'<meta charset="{charset}">'.encode() + body
    content_type = "text/html" if in_meta else f"text/html; charset={charset}"
    async with _client(lambda request: _html(body, content_type)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == text


async def test_a_utf_8_page_with_a_stray_byte_stays_utf_8() -> None:
    """One invalid byte in an undeclared UTF-8 page is replaced; the rest is not re-read."""
    body = "naïve café ".encode() + b"\x92 fin"
    async with _client(lambda request: _html(body, "text/plain")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "naïve café \ufffd fin"


async def test_unknown_charset_falls_back_to_utf8() -> None:
    """A bogus charset does not fail the fetch; undecodable bytes are replaced."""
    body = "naïve".encode() + b"\xff"
    async with _client(lambda request: _html(body, "text/plain; charset=no-such-codec")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == "naïve\ufffd"


async def test_redirects_are_followed_and_final_url_recorded() -> None:
    """Up to five redirects (relative or absolute) are followed; the last URL is recorded."""
    hops = {
        "/a": "/b",
        "/b": f"{PUBLIC}/c",
        "/c": "d",
        "/d": "/e?x=1",
        "/e": "/final#frag",
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        target = hops.get(request.url.path)
        if target is not None:
            return httpx.Response(302 if len(seen) % 2 else 301, headers={"location": target})
        return _html("<html><body><p>Arrived at the final page.</p></body></html>")

    async with _client(handler, pinned=True) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/a", max_bytes=MAX)
    assert seen == ["/a", "/b", "/c", "/d", "/e?x=1", "/final"]
    assert page.metadata["final_url"] == f"{PUBLIC}/final"
    assert "Arrived at the final page." in page.body


async def test_a_cookie_set_on_a_redirect_goes_with_the_next_hops_of_that_fetch_only() -> None:
    """A page that sets a session and redirects to itself gets it back (it would otherwise
    redirect until the fetch gives up); the next fetch starts without it."""
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cookie = request.headers.get("cookie")
        seen.append((request.url.path, cookie))
        if cookie != "session=s1":
            return httpx.Response(
                302, headers={"location": "/article", "set-cookie": "session=s1; Path=/"}
            )
        return _html("<html><body><p>Arrived with a session.</p></body></html>")

    async with _client(handler, pinned=True) as client:
        first = await web.fetch_page(client, f"{PUBLIC}/start", max_bytes=MAX)
        second = await web.fetch_page(client, f"{PUBLIC}/start", max_bytes=MAX)
    assert "Arrived with a session." in first.body and "Arrived with a session." in second.body
    assert seen == [("/start", None), ("/article", "session=s1")] * 2


async def test_a_cookie_with_a_non_ascii_value_goes_back_as_utf8() -> None:
    """A redirect setting `city=Zürich` failed the fetch (UnicodeEncodeError: the request's
    headers were ASCII) where a page whose cookie was ignored was fetched."""
    seen: list[bytes | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(next((v for k, v in request.headers.raw if k.lower() == b"cookie"), None))
        if request.url.path == "/start":
            return httpx.Response(
                302,
                headers=[
                    (b"location", b"/article"),
                    (b"set-cookie", "city=Zürich; Path=/".encode()),
                ],
            )
        return _html("<html><body><p>Arrived with a city.</p></body></html>")

    async with _client(handler) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/start", max_bytes=MAX)
    assert "Arrived with a city." in page.body
    assert seen == [None, "city=Zürich".encode()]


async def test_more_than_five_redirects_fail() -> None:
    """A sixth redirect fails the fetch instead of looping."""
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(307, headers={"location": f"/hop{count}"})

    error = await _fetch_error(handler)
    assert error.code == "FETCH_FAILED"
    assert "redirects" in error.message
    assert count == 6


def _refreshing(seconds: int, url: str) -> httpx.Response:
    return _html(
        f'<html><head><meta http-equiv="Refresh" content="{seconds}; URL=\'{url}\'">'
        "<title>Moved</title></head><body></body></html>"
    )


async def test_a_page_that_refreshes_to_another_at_once_is_followed() -> None:
    """An old site's moved page (`<meta http-equiv="refresh" content="0; url=…">`, no text)
    failed CONTENT_EMPTY, "no readable text", where a browser shows the page it points to."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path == "/old":
            return _refreshing(0, "/new?from=old&amp;x=1")
        return _html("<html><body><p>The page that moved here.</p></body></html>")

    async with _client(handler, pinned=True) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/old", max_bytes=MAX)
    assert "The page that moved here." in page.body
    assert seen == [f"{PUBLIC}/old", f"{PUBLIC}/new?from=old&x=1"]
    assert page.metadata["final_url"] == f"{PUBLIC}/new?from=old&x=1"


async def test_a_slow_refresh_or_one_to_the_page_itself_or_nowhere_is_not_followed() -> None:
    """A page that reloads itself, moves on only after a while (a front page refreshing
    every few minutes) or to a URL that cannot be fetched, is read as it is."""
    for refresh in (
        _refreshing(300, "/elsewhere"),
        _refreshing(0, "/front"),
        _refreshing(0, "javascript:go()"),
        _refreshing(0, "http://[::1"),
    ):
        body = refresh.content.replace(b"<body>", b"<body><p>Today's front page.</p>")
        async with _client(lambda request, body=body: _html(body)) as client:
            page = await web.fetch_page(client, f"{PUBLIC}/front", max_bytes=MAX)
        assert page.body == "Today's front page."


async def test_a_refresh_a_browser_does_not_parse_is_not_followed() -> None:
    """A refresh in a comment, a script's string or a no-JavaScript fallback (`<noscript>`)
    sends no browser anywhere: the page itself is read, nothing else is fetched."""
    for hidden in (
        '<noscript><meta http-equiv="refresh" content="0; url=/no-javascript"></noscript>',
        '<!-- <meta http-equiv="refresh" content="0; url=/old-home"> -->',
        '<script>var tag = \'<meta http-equiv="refresh" content="0; url=/s">\';</script>',
    ):
        seen: list[str] = []

        def handler(
            request: httpx.Request, hidden: str = hidden, seen: list[str] = seen
        ) -> httpx.Response:
            seen.append(request.url.path)
            return _html(
                f"<html><head>{hidden}<title>Home</title></head>"
                "<body><p>Today's front page.</p></body></html>"
            )

        async with _client(handler) as client:
            page = await web.fetch_page(client, f"{PUBLIC}/front", max_bytes=MAX)
        assert (page.body, seen) == ("Today's front page.", ["/front"])


async def test_a_refreshs_content_is_read_as_browsers_read_it() -> None:
    """`0 url=/x` (no `;`) goes to /x, not to a page named `url=/x`; an unquoted URL keeps its
    apostrophe; `0abc` is no refresh at all (WHATWG's declarative refresh steps)."""
    for content, followed in (
        ("0 url=/moved", "/moved"),
        ("0; url=/it's-here", "/it's-here"),
        ("0abc", None),
    ):
        seen: list[str] = []

        def handler(
            request: httpx.Request, content: str = content, seen: list[str] = seen
        ) -> httpx.Response:
            seen.append(request.url.path)
            if request.url.path != "/front":
                return _html("<html><body><p>The page that moved here.</p></body></html>")
            return _html(
                f'<html><head><meta http-equiv="refresh" content="{content}"></head>'
                "<body><p>Today's front page.</p></body></html>"
            )

        async with _client(handler) as client:
            await web.fetch_page(client, f"{PUBLIC}/front", max_bytes=MAX)
        assert seen == ["/front"] + ([followed] if followed else [])


async def test_refreshes_count_among_the_redirects_and_pass_the_ssrf_rule() -> None:
    """A chain of refreshes ends after five hops, as redirects do, and a refresh to a
    private address is refused before anything is asked of it."""
    count = 0

    def chain(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return _refreshing(0, f"/hop{count}")

    error = await _fetch_error(chain)
    assert (error.code, count) == ("FETCH_FAILED", 6)
    assert "redirects" in error.message
    hosts: list[str] = []

    def to_metadata(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return _refreshing(0, "http://169.254.169.254/latest/")

    error = await _fetch_error(to_metadata, pinned=True)
    assert error.code == "FETCH_FAILED" and "SSRF" in error.message
    assert hosts == ["93.184.215.14"]


async def test_redirect_to_a_private_address_is_refused() -> None:
    """A public page redirecting to cloud metadata fails, and metadata is never requested."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/"})

    error = await _fetch_error(handler, pinned=True)
    assert error.code == "FETCH_FAILED"
    assert "SSRF" in error.message
    assert hosts == ["93.184.215.14"]


async def test_private_page_url_is_refused() -> None:
    """A page on a private address is never requested."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return _html("<p>internal</p>")

    error = await _fetch_error(handler, url="http://192.168.1.1/admin", pinned=True)
    assert error.code == "FETCH_FAILED"
    assert hosts == []


async def test_a_host_that_cannot_be_resolved_is_not_called_an_ssrf_refusal() -> None:
    """A DNS failure says the host cannot be resolved, without the SSRF rule's wording."""
    error = await _fetch_error(
        lambda request: _html("<p>never</p>"), url="http://does-not-exist.invalid/", pinned=True
    )
    assert error.code == "FETCH_FAILED"
    assert "does-not-exist.invalid cannot be resolved" in error.message
    assert "SSRF" not in error.message


@pytest.mark.parametrize("url", ["https://xn--/", "https://xn--zz-zzz.com/"])
async def test_a_malformed_host_fails_the_fetch_not_the_pipeline(url: str) -> None:
    """A page URL stored with malformed punycode fails with FETCH_FAILED, not
    PIPELINE_EXCEPTION."""
    error = await _fetch_error(lambda request: _html("<p>never</p>"), url=url)
    assert error.code == "FETCH_FAILED"


@pytest.mark.parametrize("location", ["https://xn--/", "https://xn--zz-zzz.com/page"])
async def test_a_redirect_to_a_malformed_host_fails_the_fetch(location: str) -> None:
    """A redirect to a host name with malformed punycode fails with FETCH_FAILED."""
    error = await _fetch_error(lambda request: httpx.Response(302, headers={"location": location}))
    assert error.code == "FETCH_FAILED"


async def test_redirect_to_other_scheme_fails() -> None:
    """A redirect to a non-HTTP URL fails the fetch."""
    error = await _fetch_error(
        lambda request: httpx.Response(301, headers={"location": "file:///etc/passwd"})
    )
    assert error.code == "FETCH_FAILED"


@pytest.mark.parametrize("status", [404, 410])
async def test_missing_page_is_source_not_found(status: int) -> None:
    """A 404 or 410 page fails with SOURCE_NOT_FOUND."""
    error = await _fetch_error(lambda request: httpx.Response(status, text="gone"))
    assert error.code == "SOURCE_NOT_FOUND"
    assert str(status) in error.message


@pytest.mark.parametrize("status", [500, 503, 403, 401, 429, 304, 302])
async def test_other_error_statuses_are_fetch_failed(status: int) -> None:
    """Server errors, refusals and redirects without a Location fail with FETCH_FAILED."""
    error = await _fetch_error(lambda request: httpx.Response(status, text="nope"))
    assert error.code == "FETCH_FAILED"
    assert str(status) in error.message


async def test_streamed_page_over_the_cap_is_refused() -> None:
    """A page growing past the byte cap is abandoned with FETCH_FAILED naming the limit."""
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 1024
            yield b"x" * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/plain"}, content=endless())

    error = await _fetch_error(handler, max_bytes=10_000)
    assert error.code == "FETCH_FAILED"
    assert error.message == "page larger than 10000 bytes"
    assert sent <= 11 * 1024


async def test_declared_length_over_the_cap_is_refused() -> None:
    """A Content-Length above the cap is refused before reading the body."""
    error = await _fetch_error(
        lambda request: httpx.Response(
            200, headers={"content-type": "text/plain", "content-length": "20"}, content=b"y" * 20
        ),
        max_bytes=10,
    )
    assert error.message == "page larger than 10 bytes"


async def test_page_exactly_at_the_cap_is_accepted() -> None:
    """A page of exactly the cap is still fetched."""
    async with _client(lambda request: _html(b"z" * 64, "text/plain")) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=64)
    assert page.metadata["bytes"] == 64


async def test_network_error_is_fetch_failed() -> None:
    """A connection failure fails with FETCH_FAILED."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    error = await _fetch_error(handler)
    assert error.code == "FETCH_FAILED"
    assert "connection refused" in error.message


async def test_transport_timeout_is_fetch_failed() -> None:
    """An httpx timeout fails with FETCH_FAILED saying it timed out."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    error = await _fetch_error(handler)
    assert error.code == "FETCH_FAILED"
    assert "timed out" in error.message


async def test_whole_fetch_is_bounded_by_the_timeout() -> None:
    """A server that never answers fails within the fetch timeout."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # the slow server itself: the timeout cuts it off
        return _html("late")

    error = await _fetch_error(handler, timeout_s=0.05)
    assert error.code == "FETCH_FAILED"
    assert "timed out" in error.message


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html><head><title>Empty</title></head><body>   </body></html>", "text/html"),
        ("<html><body><script>only()</script></body></html>", "text/html"),
        ("   \n\t ", "text/plain"),
        ("", "text/html"),
    ],
)
async def test_blank_page_is_content_empty(body: str, content_type: str) -> None:
    """A page with nothing readable fails with CONTENT_EMPTY."""
    error = await _fetch_error(lambda request: _html(body, content_type))
    assert error.code == "CONTENT_EMPTY"


async def test_unsupported_content_type_is_content_empty() -> None:
    """A PDF or image is not read as text: CONTENT_EMPTY naming the type."""
    error = await _fetch_error(
        lambda request: httpx.Response(
            200, headers={"content-type": "application/pdf"}, content=b"%PDF-1.7"
        )
    )
    assert error.code == "CONTENT_EMPTY"
    assert "application/pdf" in error.message


@pytest.mark.parametrize(
    "body",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n" * 20,
        b"GIF89a" + b"readable-looking bytes " * 50,
        b"binary \x00\x01\x02 data " * 100,
    ],
)
async def test_binary_data_without_a_content_type_is_content_empty(body: bytes) -> None:
    """A body without a Content-Type is sniffed as browsers do: an image, a PDF or bytes no
    text has are not stored as the page's text (the job would complete on noise)."""
    error = await _fetch_error(lambda request: httpx.Response(200, content=body))
    assert error.code == "CONTENT_EMPTY"
    assert "binary" in error.message


@pytest.mark.parametrize("content_type", ["text/html", "text/plain; charset=utf-8"])
@pytest.mark.parametrize(
    "body",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n" * 20,
        b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 8,
        bytes(range(256)) * 8,
    ],
)
async def test_binary_data_sent_as_text_is_content_empty(body: bytes, content_type: str) -> None:
    """A server that labels every file as text (an image, a PDF, a zip sent as text/html):
    the bytes are not stored as the page's text, and the job does not complete on noise."""
    error = await _fetch_error(
        lambda request: httpx.Response(200, headers={"content-type": content_type}, content=body)
    )
    assert error.code == "CONTENT_EMPTY"
    assert "binary" in error.message


async def test_utf16_text_labelled_so_is_read_without_a_byte_order_mark() -> None:
    """UTF-16 text holds NUL bytes: with its charset declared it is still read as text."""
    body = ARTICLE.encode("utf-16-le")
    async with _client(lambda request: _html(body, "text/html; charset=utf-16le")) as client:
        page = await web.fetch_page(client, PUBLIC + "/", max_bytes=MAX)
    assert "readable part of a page" in page.body


@pytest.mark.parametrize(
    "body",
    [
        ARTICLE.encode(),
        ARTICLE.encode("utf-16"),
        "<p>Café déjà vu, tab\tand form feed\x0c lines</p>".encode("cp1252"),
        b"\n  <!DOCTYPE html><html><body><p>A stray vertical tab \x0b here</p></body></html>",
        b"<HTML><body><p>A NUL \x00 pasted in</p></body></HTML>",
    ],
)
async def test_text_without_a_content_type_is_still_read(body: bytes) -> None:
    """HTML or text sent without a Content-Type (UTF-16 with its byte-order mark included)
    is read as a page."""
    async with _client(lambda request: httpx.Response(200, content=body)) as client:
        page = await web.fetch_page(client, PUBLIC + "/", max_bytes=MAX)
    assert page.body


async def test_a_page_compressed_twice_over_is_refused_before_reading() -> None:
    """Each encoding layer multiplies what one chunk expands to (a gzip inside a gzip turned
    3.5 KB into 2 GB): more than one layer is refused, nothing is decompressed."""
    bomb = gzip.compress(gzip.compress(b"\0" * 10_000_000))
    error = await _fetch_error(
        lambda request: httpx.Response(
            200,
            headers={"content-type": "text/plain", "content-encoding": "gzip, gzip"},
            content=bomb,
        )
    )
    assert error.code == "FETCH_FAILED"
    assert "encoded 2 times over" in error.message


def _encoded(coding: str, data: bytes, content_type: str = "text/plain") -> httpx.Response:
    headers = {"content-type": content_type, "content-encoding": coding}
    return httpx.Response(200, headers=headers, stream=wire.Wire(data))


def _compressed(coding: str, data: bytes) -> bytes:
    match coding:
        case "gzip":
            return gzip.compress(data)
        case "deflate":
            return zlib.compress(data)
        case _:  # deflate as some servers send it: raw, without the zlib wrapper
            squeezer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            return squeezer.compress(data) + squeezer.flush()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_a_compressed_page_is_read(coding: str) -> None:
    """gzip and deflate pages (deflate with or without its zlib wrapper) read as their text."""
    text = "Compressed words, café. " * 2000
    body = _compressed(coding, text.encode())
    response = _encoded(coding.removeprefix("raw-"), body, "text/plain; charset=utf-8")
    async with _client(lambda request: response) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == text.strip()
    assert page.metadata["bytes"] == len(text.encode())


async def test_a_corrupt_gzip_page_fails_the_fetch() -> None:
    corrupt = gzip.compress(b"words " * 100)[:20] + b"\xff" * 50
    error = await _fetch_error(lambda request: _encoded("gzip", corrupt))
    assert error.code == "FETCH_FAILED"
    assert "gzip" in error.message


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_page_cut_off_fails_instead_of_keeping_a_part(coding: str) -> None:
    """A body whose compressed data ends early (a connection closed, or a chunked answer
    ended on purpose) was stored as the whole page, half of it; reprocess never fetches it
    again."""
    body = _compressed(coding, " ".join(f"word{n}" for n in range(20_000)).encode())
    error = await _fetch_error(lambda request: _encoded(coding, body[: len(body) // 2]))
    assert error.code == "FETCH_FAILED"
    assert error.message == f"the page is cut off: its {coding} data ends early"


async def test_an_empty_body_said_to_be_compressed_is_an_empty_page() -> None:
    error = await _fetch_error(lambda request: _encoded("gzip", b""))
    assert error.code == "CONTENT_EMPTY"


async def test_a_gzip_bomb_is_refused_without_inflating_it_whole() -> None:
    """64 MiB of zeros in 64 KB of gzip is refused at the 5 MiB cap while memory stays near
    the cap (httpx inflated each 64 KB network read whole: 64 MiB at once)."""
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    tracemalloc.start()
    try:
        error = await _fetch_error(lambda request: _encoded("gzip", bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "FETCH_FAILED" and "larger than" in error.message
    assert peak < 4 * MAX, peak


# br is decoded only when brotli is installed
UNDECODABLE = [
    "compress",
    "x-compress",
    *(["br"] if importlib.util.find_spec("brotli") is None else []),
]


@pytest.mark.parametrize("coding", UNDECODABLE)
async def test_a_page_in_a_coding_that_cannot_be_decoded_fails_naming_it(coding: str) -> None:
    """A coding httpx cannot decode fails the fetch instead of storing binary as the text."""
    error = await _fetch_error(
        lambda request: httpx.Response(
            200,
            headers={"content-type": "text/html", "content-encoding": coding},
            content=bytes(range(256)) * 4,
        )
    )
    assert error.code == "FETCH_FAILED"
    assert coding in error.message


@pytest.mark.parametrize("coding", ["none", "UTF-8", "binary", "identity, none"])
async def test_a_coding_token_that_means_nothing_is_read_as_is(coding: str) -> None:
    """Misconfigured servers send `Content-Encoding: none` (a PHP idiom) or a charset there;
    as httpx does, a token that names no compression is no coding."""
    page = _encoded(coding, b"<html><body><p>Hello there, reader.</p></body></html>", "text/html")
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert fetched.body == "Hello there, reader."


class _Chunks(httpx.AsyncByteStream):
    """Raw bytes in the network reads given."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


@pytest.mark.parametrize("split", [1, 200, 201, 202, 400])
async def test_a_gzip_body_of_several_members_is_read_whole(split: int) -> None:
    """RFC 1952 lets a gzip body be members one after another (`cat a.gz b.gz`, a server
    compressing each flush): every member is the page, not only the first, wherever the
    network's chunks cut them."""
    text = "<p>" + "Words of the first member, then of the next one. " * 40 + "</p>"
    raw = text.encode()
    body = gzip.compress(raw[:300]) + gzip.compress(raw[300:600]) + gzip.compress(raw[600:])
    chunks = [body[i : i + split] for i in range(0, len(body), split)]
    page = httpx.Response(
        200,
        headers={"content-type": "text/html", "content-encoding": "gzip"},
        stream=_Chunks(chunks),
    )
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert fetched.body.count("Words of the first member") == 40


async def test_bytes_after_a_gzip_body_that_start_no_member_are_ignored() -> None:
    body = gzip.compress(b"<p>The whole page.</p>") + b"trailing junk"
    async with _client(lambda request: _encoded("gzip", body, "text/html")) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert fetched.body == "The whole page."


@pytest.mark.parametrize("coding", ["x-gzip", "X-Deflate"])
async def test_the_old_names_of_gzip_and_deflate_are_inflated(coding: str) -> None:
    text = "Compressed words under an old name. " * 100
    body = _compressed(coding.lower().removeprefix("x-"), text.encode())
    async with _client(lambda request: _encoded(coding, body)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.body == text.strip()


async def test_a_charset_holding_a_nul_reads_as_the_bytes_say() -> None:
    """httpx reads RFC 2231's `charset*=''utf-8%00` as `utf-8\\x00`, which codecs.lookup
    refuses with ValueError: the job failed with PIPELINE_EXCEPTION."""
    page = _html("Plain words, café.".encode(), "text/plain; charset*=''utf-8%00")
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/odd", max_bytes=MAX)
    assert fetched.body == "Plain words, café."


async def test_a_content_type_sent_twice_is_read_once() -> None:
    """httpx joins two headers into `text/html, text/html`: the page was refused as an
    unsupported content type."""
    page = httpx.Response(
        200,
        headers=[("content-type", "text/plain"), ("content-type", "text/markdown")],
        content=b"# Heading\n\nWords.",
    )
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/twice", max_bytes=MAX)
    assert (fetched.title, fetched.metadata["content_type"]) == ("Heading", "text/markdown")


@pytest.mark.parametrize("location", ["data:text/html,hi", "javascript:alert(1)", "mailto:a@b.c"])
async def test_a_redirect_to_a_url_that_cannot_be_fetched_says_so(location: str) -> None:
    error = await _fetch_error(lambda request: httpx.Response(302, headers={"location": location}))
    assert error.code == "FETCH_FAILED"
    assert error.message.startswith("redirected to a URL that cannot be fetched")


async def test_a_connection_reset_mid_answer_names_the_error_without_a_dangling_colon() -> None:
    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("")

    error = await _fetch_error(reset)
    assert error.message == "could not fetch the page: ReadError"


async def test_a_connection_reset_names_the_reset_its_bare_read_error_leaves_unsaid() -> None:
    """A reset that httpx's async transport reports as a bare ReadError is named by its cause."""

    def reset(request: httpx.Request) -> httpx.Response:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as exc:
            raise httpx.ReadError("") from exc

    error = await _fetch_error(reset)
    reset_by_peer = "ReadError: [Errno 104] Connection reset by peer"
    assert error.message == f"could not fetch the page: {reset_by_peer}"


async def test_an_error_raised_from_none_is_not_named_by_what_it_replaced() -> None:
    """`raise … from None` hides what was being handled, in the job's message as in a
    traceback: a bare ReadError raised so is not named by the error it replaced."""

    def replaced(request: httpx.Request) -> httpx.Response:
        try:
            raise KeyError("internal detail")
        except KeyError:
            raise httpx.ReadError("") from None

    error = await _fetch_error(replaced)
    assert error.message == "could not fetch the page: ReadError"


@pytest.mark.parametrize("charset", ["base64", "rot13", "idna", "zlib"])
async def test_a_charset_that_is_no_text_encoding_reads_as_utf8(charset: str) -> None:
    body = "Plain words, café.".encode()
    page = _html(body, f"text/plain; charset={charset}")
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/odd", max_bytes=MAX)
    assert fetched.body == "Plain words, café."


def test_a_page_too_large_for_the_parser_is_stripped_of_tags() -> None:
    """Above a million characters the parser's time grows faster than the page: tags are
    stripped instead, in one linear pass."""
    paragraph = "<p>" + " ".join(f"word{n}" for n in range(150)) + "</p>\n"
    article = paragraph * (1_100_000 // len(paragraph))
    page = f"<html><head><title>T</title></head><body><article>{article}</article></body></html>"
    started = time.process_time()
    body, title = web._readable_html(page)
    assert time.process_time() - started < 5  # the parser took 7.6 s on 2.5 MB
    assert body.startswith("word0 word1") and title == "T"
    assert len(body) > 1_000_000  # all of it: the parser kept about 1 000 characters of it


def test_a_page_too_large_for_the_parser_keeps_its_title() -> None:
    """A page of over a million characters (most of them its scripts) still has its
    <title>, entities decoded, as a smaller page has."""
    script = "<script>" + "var x = 1;" * 110_000 + "</script>"
    page = (
        f"<html><head><TITLE data-x=1>Tom &amp; Jerry\n | News</TITLE>{script}</head>"
        "<body><article><p>The text.</p></article></body></html>"
    )
    body, title = web._readable_html(page)
    assert (body, title) == ("The text.", "Tom & Jerry | News")


@pytest.mark.parametrize(
    ("inline", "word"),
    [("<b>bold</b> ", "bold"), ("<a href=/x>link</a> ", "link"), ("<span><i>x</i></span> ", "x")],
    ids=["bold", "links", "nested"],
)
def test_a_paragraph_crowded_with_inline_elements_is_extracted_in_linear_time(
    inline: str, word: str
) -> None:
    """trafilatura's time on a <p> grows with the square of its elements: 12,000 <b> in one
    <p> (108 KB) took 8 s, 60,000 <span> (900 KB) held a job's fetch for minutes."""
    page = (
        "<html><head><title>Crowded</title></head><body><article><p>"
        + inline * 20_000
        + "</p></article></body></html>"
    )
    started = time.process_time()
    body, _title = web._readable_html(page)
    assert time.process_time() - started < 5
    assert body.split().count(word) == 20_000


def test_a_crowded_paragraph_keeps_its_line_breaks_and_drops_its_scripts() -> None:
    """An old-style page written as one <p> of lines parted by <br> is not read as one word
    per line break, and a script in it is no text."""
    lines = "".join(f"Line {index} of the poem<br>" for index in range(300))
    page = (
        "<html><body><article><p>"
        + lines
        + "<script>var tracking_code = 1;</script><style>.x { color: red }</style>"
        + "</p></article></body></html>"
    )
    body, _title = web._readable_html(page)
    assert "poemLine" not in body
    assert body.split().count("poem") == 300
    assert "tracking_code" not in body
    assert "color" not in body


def test_a_paragraph_with_some_markup_keeps_it_for_the_extractor() -> None:
    """An ordinary paragraph (a few links and emphasis) is extracted as before."""
    page = (
        "<html><body><article><p>"
        + "Some <b>bold</b> and <a href=/x>a link</a> in a sentence. " * 40
        + "</p></article></body></html>"
    )
    body, _title = web._readable_html(page)
    assert body.count("Some bold and a link in a sentence.") == 40


def _extracted_recording_tables(
    page: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[bool]]:
    """The page's readable text, and whether each extraction kept its tables."""
    seen: list[bool] = []
    extract = web.trafilatura.bare_extraction

    def recording(page: object, **options: bool) -> object:
        seen.append(options["include_tables"])
        return extract(page, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(web.trafilatura, "bare_extraction", recording)
    body, _ = web._readable_html(page)
    return body, seen


@pytest.mark.parametrize(
    ("table", "tables_kept"),
    [
        (("<tr>" + "<td>cell" * 20) * 2_000, True),  # a large table of data
        ("<tr>" + "<td>a" * 20_000, False),  # one row: 50,000 cells took 16 s
        ("<tr><td colspan=100>a" * 5_000, False),  # 47,000 such rows: 18 s, 790 MB
        ("<tr>" + "<td>h" * 100 + "<tr><td>a" * 5_000, False),  # one wide row pads the rest
        ("<td>cell" * 50, True),  # a few cells outside any row
        ("<td>a" * 20_000, False),  # cells outside any row make one: 100,000 took 28 s
        ("<tbody><tr><td>h</tr>" + "<td>a" * 20_000, False),  # they join the last row
        ("<tr><td rowspan=2>cell<td>v" * 2_000, True),  # a data table with a spanning key
        (("<tr>" + "<td rowspan=100>a" * 100) * 30, False),  # 400 such rows: 58 s, 10 MB
    ],
    ids=[
        "data",
        "one-long-row",
        "wide-cells",
        "one-wide-row",
        "cells-without-a-row",
        "many-cells-without-a-row",
        "cells-after-a-row",
        "a-key-spanning-rows",
        "cells-spanning-rows",
    ],
)
def test_tables_that_would_take_the_extractor_minutes_are_left_out(
    table: str, tables_kept: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trafilatura pads every row to the table's width and counts each row cell by cell: a
    hostile table under the parser's size limit held a job's fetch for 6 minutes (a cancel
    waited as long). Such tables are left out; the text still comes from the tag strip."""
    page = f"<html><body><p>Intro.</p><table>{table}</table></body></html>"
    body, seen = _extracted_recording_tables(page, monkeypatch)
    assert seen == [tables_kept]
    assert ("cell" if tables_kept else "a") in body.split()


@pytest.mark.parametrize(
    ("levels", "rows", "tables_kept"),
    [(3, 3_000, True), (60, 300, False)],
    ids=["a-few-levels", "sixty-levels"],
)
def test_tables_nested_deeply_are_left_out(
    levels: int, rows: int, tables_kept: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For each table, trafilatura gathers the elements of each table nested in it: 80 nested
    tables of 110,000 rows in all took 20 s to extract, and counting their rows took as long
    again (each table's count walked every table inside it)."""
    level = "<table>" + "<tr><td>row " * rows + "<tr><td>"
    page = f"<html><body><p>Intro.</p>{level * levels}end{'</table>' * levels}</body></html>"
    body, seen = _extracted_recording_tables(page, monkeypatch)
    assert seen == [tables_kept]
    assert "row" in body.split() and "end" in body.split()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            "<html><head><title>" + "word " * 5_000 + "</title></head><body><p>Text.</p>",
            "text/html",
        ),
        ("# " + "word " * 5_000 + "\n\nText.", "text/markdown"),
    ],
)
async def test_a_page_title_is_cut_to_the_title_limit(body: str, content_type: str) -> None:
    """A page's 25,000-character <title> or heading was stored whole (up to trafilatura's
    10,000), where every other title is at most 500 characters."""
    async with _client(lambda request: _html(body, content_type)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.title is not None and page.title.startswith("word word")
    assert len(page.title) <= 500


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            "<html><head><title>&#27;[31mRed&#7; \x01 page</title></head><body><p>T.</p>",
            "text/html",
        ),
        ("# \x1b[31mRed\x07 \x01 page\n\nText.", "text/markdown"),
    ],
)
async def test_a_page_title_loses_its_control_characters(body: str, content_type: str) -> None:
    """A terminal escape in a page's title (as a character reference or as itself) is dropped."""
    async with _client(lambda request: _html(body, content_type)) as client:
        page = await web.fetch_page(client, f"{PUBLIC}/", max_bytes=MAX)
    assert page.title == "[31mRed page"


@pytest.mark.parametrize(
    ("charset", "body"),
    [
        ("punycode", b"menos-" + b"z" * 20_000),
        ("unicode-escape", b"C:\\new\\u0041 caf\xc3\xa9"),
        ("raw-unicode-escape", b"C:\\u0041 caf\xc3\xa9"),
        ("utf-7", b"Hello +2AA- world, caf\xc3\xa9"),
    ],
)
async def test_a_charset_that_no_browser_knows_reads_as_the_bytes_say(
    charset: str, body: bytes
) -> None:
    """A header naming one of Python's own codecs (for host names or source code) is ignored:
    punycode's decoder took quadratic time on the worker's event loop (30 s for a 1 MB page,
    every job of the worker frozen meanwhile) and the escape codecs rewrote the text."""
    page = _html(body, f"text/plain; charset={charset}")
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/odd", max_bytes=MAX)
    assert fetched.body == body.decode("utf-8")


async def test_a_page_labelled_utf7_keeps_its_text_past_a_surrogate() -> None:
    """UTF-7 decoded `+2AA-` to a lone surrogate, and the HTML extractor dropped the text
    from there on: the page is read as its bytes say, whole."""
    page = _html(b"<html><body><p>Hello +2AA- world.</p></body></html>", "text/html; charset=utf-7")
    async with _client(lambda request: page) as client:
        fetched = await web.fetch_page(client, f"{PUBLIC}/odd", max_bytes=MAX)
    assert fetched.body == "Hello +2AA- world."

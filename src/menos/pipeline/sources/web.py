"""Web-page source: fetch a page over httpx (capped, redirect hops counted) and keep its text."""

from __future__ import annotations

import asyncio
import codecs
import collections
import html
import re
from typing import Any

import httpx
import msgspec
import trafilatura
from lxml import etree

from menos import errors
from menos.pipeline import bounded, threads
from menos.pipeline.sources import fetched

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A page's <meta http-equiv="refresh">, looked for in its first characters (the head), as
# WHATWG parses its content: a delay, then whitespace, `;` or `,` (anything else makes it no
# refresh), an optional `url=`, the URL: the rest, or up to its closing quote if quoted.
# Followed like a redirect when it leaves within this many seconds.
_META_TAG = re.compile(r"<meta\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([^\s=/>"']+)\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""")
_REFRESH = re.compile(
    r"""\s*(?P<delay>\d{1,9})[\d.]*"""
    r"""(?:(?=[\s;,])\s*[;,]?\s*(?:url\s*=\s*)?(?P<quote>["']?)(?P<url>.*))?""",
    re.IGNORECASE | re.DOTALL,
)
_REFRESH_SCAN_CHARS = 65_536
# Where a browser parses no elements: a comment, and the text of these elements (a noscript's,
# as scripts run). A <meta> written there (commented out, a script's string, a no-JavaScript
# fallback page) refreshes nothing.
_RAW_TEXT_TAGS = ("script", "style", "noscript", "template", "textarea", "title", "xmp")
_RAW_TEXT_OPEN = re.compile(rf"<!--|<({'|'.join(_RAW_TEXT_TAGS)})(?=[\s/>])", re.IGNORECASE)
_RAW_TEXT_CLOSE = {
    name: re.compile(rf"</{name}(?=[\s/>])", re.IGNORECASE) for name in _RAW_TEXT_TAGS
}
_REFRESH_MAX_DELAY_S = 5
_GONE_STATUSES = frozenset({404, 410})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_XML_TYPES = frozenset({"application/xhtml+xml"})
_VERBATIM_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown"})
_ACCEPT = "text/html,application/xhtml+xml,text/markdown;q=0.9,text/plain;q=0.8"
# Only the start of a document may declare its encoding in a <meta> tag.
_META_CHARSET_WINDOW = 2048
# A byte-order mark says more than any label (as browsers decode): the -sig and utf-16 codecs
# drop it, and utf-16 reads the byte order from it.
_BOMS = (  # UTF-32's marks first: UTF-32LE's starts with UTF-16LE's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# windows-1252, whose 0x80-0x9F are printable (“ ” € …) where Latin-1 has control characters:
# browsers read Latin-1 and ASCII labels as it.
_WINDOWS_1252 = "cp1252"
# Browsers read legacy labels as the supersets the encodings grew into (WHATWG Encoding): a
# page labelled gb2312 holds GBK's characters (朱镕基), shift_jis Windows' (①, 髙), euc-kr
# the extended Hangul (똠), and Python's strict codecs of those names made them U+FFFD.
# Python's names after codecs.lookup, and what a browser decodes with.
_BROWSER_CODECS = {
    "iso8859-1": _WINDOWS_1252,
    "ascii": _WINDOWS_1252,
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
    "iso8859-9": "cp1254",
    "tis-620": "cp874",
    "iso8859-11": "cp874",
}
# WHATWG labels that Python's codecs do not know, read by their codec as browsers do.
_BROWSER_LABELS = {
    "windows-31j": "cp932",
    "x-sjis": "cp932",
    "x-gbk": "gb18030",
    "csgb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "windows-949": "cp949",
    "x-euc-jp": "euc_jp",
    "x-x-big5": "big5hkscs",
    "cn-big5": "big5hkscs",
    "windows-874": "cp874",
    "dos-874": "cp874",
    "x-cp1252": _WINDOWS_1252,
}
# Python's own codecs, which no browser reads a page in: a label naming one is ignored.
# punycode's decoder takes quadratic time (30 s for 1 MB, on the worker's event loop), the
# escape codecs rewrite backslashes, idna and undefined always fail. UTF-7, which WHATWG
# forbids, decodes `+2AA-` to a lone surrogate: no extractor, analyzer or column takes one
# (lxml cut the text there, the builtin analyzer failed the job PIPELINE_EXCEPTION).
_NOT_PAGE_ENCODINGS = frozenset(
    {"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined", "utf-7"}
)
# A body sent without a Content-Type is sniffed as browsers do (WHATWG MIME Sniffing): one that
# starts with a document's or image's signature, or holds a byte no text has in its first
# 1445 bytes, is binary (a PNG or PDF read as text is noise, not a page).
_SNIFF_BYTES = 1445
_BINARY_BYTE = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_NUL_BYTE = re.compile(rb"\x00")
_BINARY_SIGNATURES = (
    b"%PDF-",
    b"%!PS-Adobe-",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"\xff\xd8\xff",
    b"PK\x03\x04",
    b"\x1f\x8b\x08",
)
# What a browser takes for HTML before it looks for binary bytes: a page that, after blank
# bytes, opens with one of these tags is HTML whatever stray control byte it holds.
_HTML_SIGNATURE = re.compile(
    rb"[\t\n\x0c\r ]*<(?:!doctype html|html|head|script|iframe|h1|div|font|table|a|style"
    rb"|title|b|body|br|p|!--)[ >]",
    re.IGNORECASE,
)
# A character a valid UTF-8 sequence of two or more bytes decodes to.
_DECODED_BEYOND_ASCII = re.compile("[^\\x00-\\x7f\\ufffd]")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
# An XML document (application/xhtml+xml) declares its encoding in its first line, as the XML
# parser of a browser reads it; an HTML parser does not (WHATWG), so only XHTML's counts.
_XML_ENCODING = re.compile(rb"""<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9_.:-]+)["']""")
# A <title> and its end, for a page too large for the parser: no backtracking, one pass each.
_TITLE_OPEN = re.compile(r"<title[\t\n\f\r />]", re.IGNORECASE)
_TITLE_CLOSE = re.compile(r"</title", re.IGNORECASE)
_TAG_NAME = re.compile(r"/?([A-Za-z][A-Za-z0-9]*)")
# trafilatura took 7.6 s on a 2.5 MB page and 24.7 s on a 5 MB one: above this, tags are stripped.
_PARSER_MAX_CHARS = 1_000_000
# trafilatura pads each table row to the table's width (at most _SPAN_MAX columns) and finds
# each cell's column by counting the row so far: one row of 50,000 cells took 16 s, 47,000
# rows of a 100-column cell 18 s and 790 MB. For each table it also gathers the elements of
# every table nested in it, once per nested table: 80 nested tables of 110,000 rows in all
# took 20 s. Above this much work (the squared widths of the rows, as it counts them, plus the
# elements it gathers), a page's tables are left out of the extraction.
_TABLE_WORK_MAX = 20_000_000
_SPAN_MAX = 100  # trafilatura's own cap of a colspan
# trafilatura's time on a <p> grows with the square of the elements in it: one <p> of 12,000
# <b> (108 KB) took 8 s to extract, 60,000 <span> (900 KB) over 4 minutes. A paragraph with
# more elements than this loses its inline markup (never its text) before extraction.
_PARAGRAPH_ELEMENTS_MAX = 200
_NOT_TEXT_TAGS = ("script", "style", "noscript", "template")
# Inline markup trafilatura's markdown would mark: emphasis with `*`, strikethrough with `~~`,
# keyboard and variable text with backticks, and <sub>/<sup> kept as literal HTML tags
# (`H<sub>2</sub>O`). None is structure; renamed to span, their text reads as in plain text.
_INLINE_MARKUP_TAGS = (
    *("b", "strong", "i", "em", "u", "mark"),
    *("del", "s", "strike", "sub", "sup", "kbd", "samp", "tt", "var"),
)
_CELL_TAGS = frozenset({"td", "th"})
# trafilatura strips a table's thead, tbody and tfoot: a cell directly in one is outside any row.
_ROW_PARENTS = frozenset({"table", "thead", "tbody", "tfoot"})
# Elements whose content is never visible text, and elements that end a line of text.
_INVISIBLE_TAGS = frozenset({"script", "style", "noscript", "template", "head", "svg"})
_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "tr", "section", "article", "blockquote", "h1", "h2", "h3", "h4"}
    | {"h5", "h6", "pre", "table", "ul", "ol", "header", "footer", "main", "aside", "nav"}
)


async def fetch_page(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    timeout_s: float = 10.0,
    max_redirects: int = 5,
) -> fetched.Fetched:
    """Fetch `url` and return its readable text; every failure is a PipelineError.

    Redirects are followed here, at most `max_redirects` hops, each a new request through
    `client` (so a `ssrf.PinnedTransport` checks every hop). `timeout_s` bounds the whole
    fetch, all hops included; the body is streamed and abandoned past `max_bytes`.
    """
    try:
        async with asyncio.timeout(timeout_s):
            page = await _fetch(client, url, max_bytes, timeout_s, max_redirects)
    except TimeoutError:
        raise errors.PipelineError(
            "FETCH_FAILED", f"timed out after {timeout_s:g} s fetching the page"
        ) from None
    return await _readable(page)  # extraction is not the fetch: its timeout does not apply


class _Page(msgspec.Struct, frozen=True):
    """A downloaded page, decoded, before its readable text is taken out."""

    text: str
    content_type: str
    is_html: bool
    metadata: dict[str, Any]


async def _readable(page: _Page) -> fetched.Fetched:
    if page.is_html:
        # trafilatura parses with lxml, CPU-bound on large pages: keep the event loop free.
        body, title = await threads.in_daemon_thread(_readable_html, page.text)
    else:
        body, title = page.text.strip(), _markdown_title(page.text, page.content_type)
    if not body.strip():
        raise errors.PipelineError("CONTENT_EMPTY", "the page has no readable text")
    return fetched.Fetched(body=body, title=title, metadata=page.metadata)


async def _fetch(
    client: httpx.AsyncClient, url: str, max_bytes: int, timeout_s: float, max_redirects: int
) -> _Page:
    current = url
    # This fetch's own cookies: one a hop sets goes with the next hops, as a browser's would
    # (a page that sets a session and redirects to itself), never with another fetch (the
    # client serves every owner, and keeps none).
    cookies = httpx.Cookies()
    for _hop in range(max_redirects + 1):
        try:
            request = client.build_request(
                "GET", current, headers={"accept": _ACCEPT}, timeout=timeout_s
            )
            # A cookie's value goes back as UTF-8 (the page may have set `city=Zürich`): the
            # request's headers are ASCII otherwise, and encoding it would fail the fetch.
            request.headers.encoding = "utf-8"
            cookies.set_cookie_header(request)
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    cookies.extract_cookies(response)
                    current = _redirect_target(response.url, location)
                    continue
                page = await _read_page(response, current, max_bytes)
                # A page that sends browsers on at once (`<meta http-equiv="refresh">`, an
                # old site's moved page) is a redirect too, counted among the same hops.
                target = _refresh_target(page, response.url)
                if target is None or target == current:
                    return page
                cookies.extract_cookies(response)
                current = target
                continue
            finally:
                await response.aclose()
        except errors.Unresolvable as exc:
            raise errors.PipelineError(
                "FETCH_FAILED", f"could not fetch the page: {exc.message}"
            ) from exc
        except errors.InvalidInput as exc:
            raise errors.PipelineError(
                "FETCH_FAILED", f"blocked by the SSRF rule: {exc.message}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise errors.PipelineError(
                "FETCH_FAILED", f"timed out after {timeout_s:g} s fetching the page"
            ) from exc
        # Every URL requested here is a valid one (checked when submitted, or built by
        # `_redirect_target`); httpx also builds the next request of a redirect it is not
        # following, and its Location (`data:…`, `mailto:…`) is what it refuses.
        except httpx.InvalidURL as exc:
            raise errors.PipelineError(
                "FETCH_FAILED", f"redirected to a URL that cannot be fetched ({exc})"
            ) from exc
        # UnicodeError: httpx builds the request's Host from a host its URL parser let
        # through (malformed punycode such as `xn--`) and idna refuses it only then.
        except (httpx.HTTPError, httpx.StreamError, UnicodeError) as exc:
            raise errors.PipelineError(
                "FETCH_FAILED", f"could not fetch the page: {errors.describe(exc)}"
            ) from exc
    raise errors.PipelineError("FETCH_FAILED", f"more than {max_redirects} redirects")


def _refresh_target(page: _Page, base: httpx.URL) -> str | None:
    """The http(s) URL an HTML page's `<meta http-equiv="refresh" content="N; url=…">`
    sends a browser to within _REFRESH_MAX_DELAY_S seconds, if any: a refresh without a URL
    reloads the page itself, a slower one is a page to read first (a front page reloading
    itself every few minutes), and one to a URL that cannot be fetched is ignored."""
    if not page.is_html:
        return None
    tags = (
        tag
        for start, stop in _markup_spans(page.text, _REFRESH_SCAN_CHARS)
        for tag in _META_TAG.finditer(page.text, start, stop)
    )
    for tag in tags:
        attributes = {
            name.lower(): html.unescape(value[1:-1] if value[0] in "\"'" else value)
            for name, value in _ATTRIBUTE.findall(tag.group())
        }
        if attributes.get("http-equiv", "").strip().lower() != "refresh":
            continue
        refresh = _REFRESH.fullmatch(attributes.get("content", ""))
        if refresh is None or int(refresh["delay"]) > _REFRESH_MAX_DELAY_S:
            return None
        url = (refresh["url"] or "").strip()
        if refresh["quote"]:
            url = url.partition(refresh["quote"])[0].strip()
        try:
            return _redirect_target(base, url) if url else None
        except (errors.PipelineError, httpx.InvalidURL):
            return None
    return None


def _markup_spans(text: str, end: int) -> list[tuple[int, int]]:
    """The spans of `text[:end]` a browser reads elements in: outside comments and the text of
    _RAW_TEXT_TAGS. One pass: each skip ends at its close, or ends the search if it has none."""
    spans: list[tuple[int, int]] = []
    position = 0
    while (opened := _RAW_TEXT_OPEN.search(text, position, end)) is not None:
        spans.append((position, opened.start()))
        if opened[1] is None:  # `<!-->` is a whole (empty) comment
            close = text.find("-->", opened.start() + 2, end)
            position = end if close == -1 else close + 3
        else:
            closing = _RAW_TEXT_CLOSE[opened[1].lower()].search(text, opened.end(), end)
            position = end if closing is None else closing.end()
    spans.append((position, end))
    return spans


def _redirect_target(base: httpx.URL, location: str) -> str:
    target = base.join(location).copy_with(fragment=None)
    if target.scheme not in ("http", "https"):
        raise errors.PipelineError(
            "FETCH_FAILED", f"redirected to a non-HTTP URL ({target.scheme})"
        )
    return str(target)


async def _read_page(response: httpx.Response, url: str, max_bytes: int) -> _Page:
    status = response.status_code
    if status in _GONE_STATUSES:
        raise errors.PipelineError("SOURCE_NOT_FOUND", f"page not found (HTTP {status})")
    if not 200 <= status < 300:
        raise errors.PipelineError("FETCH_FAILED", f"the server answered HTTP {status}")
    # A header sent twice is read as its last (as browsers do), not as the two joined.
    declared_types = response.headers.get_list("content-type") or [""]
    content_type = declared_types[-1].split(";", 1)[0].strip().lower()
    if content_type and content_type not in _HTML_TYPES and content_type not in _VERBATIM_TYPES:
        raise errors.PipelineError(
            "CONTENT_EMPTY", f"nothing readable: unsupported content type {content_type}"
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw, more = await bounded.body(response, max_bytes)
    except bounded.Undecodable as exc:
        raise errors.PipelineError("FETCH_FAILED", f"the page is {exc}") from None
    if more:
        raise _too_large(max_bytes)
    # A server that labels every file text/html (an image, a PDF, an archive) sends noise a
    # job would complete on: declared text is sniffed too, for a signature or a NUL byte only
    # (a stray control character is no reason to refuse text said to be text), unless its
    # charset is UTF-16 or UTF-32, whose text holds NUL bytes without a byte-order mark.
    if _is_binary(raw, declared=bool(content_type)) and not _wide_charset(
        response.charset_encoding
    ):
        sent = f"sent as {content_type}" if content_type else "sent without a content type"
        raise errors.PipelineError("CONTENT_EMPTY", f"nothing readable: binary data {sent}")
    size = len(raw)
    is_html = content_type not in _VERBATIM_TYPES
    try:
        encoding = _encoding(response, raw, is_html=is_html, is_xml=content_type in _XML_TYPES)
        text = raw.decode(encoding, errors="replace")
    except (LookupError, UnicodeError):  # a codec that is no text encoding (base64, idna, …)
        text = raw.decode("utf-8", errors="replace")
    metadata: dict[str, Any] = {
        "final_url": url,
        "status_code": status,
        "content_type": content_type or None,
        "bytes": size,
    }
    return _Page(text=text, content_type=content_type, is_html=is_html, metadata=metadata)


def _is_binary(raw: bytes, *, declared: bool = False) -> bool:
    """Whether `raw` is binary data; for a body `declared` as text, only a file's signature or
    a NUL byte says so."""
    if raw.startswith(tuple(bom for bom, _name in _BOMS)):  # UTF-16's text holds NUL bytes
        return False
    if _HTML_SIGNATURE.match(raw):
        return False
    binary_byte = _NUL_BYTE if declared else _BINARY_BYTE
    return raw.startswith(_BINARY_SIGNATURES) or bool(binary_byte.search(raw, 0, _SNIFF_BYTES))


def _wide_charset(label: str | None) -> bool:
    """Whether a Content-Type's charset names UTF-16 or UTF-32."""
    try:
        name = codecs.lookup(label).name if label else ""
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return False
    return name.startswith(("utf-16", "utf-32"))


def _too_large(max_bytes: int) -> errors.PipelineError:
    return errors.PipelineError("FETCH_FAILED", f"page larger than {max_bytes} bytes")


def _encoding(response: httpx.Response, raw: bytes, *, is_html: bool, is_xml: bool) -> str:
    """A byte-order mark's encoding, else the header's charset, else an XHTML page's XML
    declaration, else an HTML <meta> charset
    (UTF-8 for one naming UTF-16 or UTF-32), else what the bytes look like (`_undeclared`).
    A label naming no encoding a page is read in (`charset=`, `charset=none`, `utf-7`) counts
    as no label: the next source decides, as browsers read it (WHATWG).
    Latin-1 and ASCII labels mean windows-1252, gb2312 GBK, shift_jis Windows' code page,
    and so on, as browsers read them (WHATWG)."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            return name
    from_header = _page_codec(response.charset_encoding)
    if from_header is not None:
        return from_header
    if is_xml or is_html:
        declared = _XML_ENCODING.match(raw) if is_xml else None
        if declared is None and is_html:
            declared = _META_CHARSET.search(raw[:_META_CHARSET_WINDOW])
        candidate = declared.group(1).decode("ascii") if declared else None
        # A declaration readable as ASCII (<?xml encoding?> or <meta>) cannot be right about
        # UTF-16 or UTF-32: as browsers do (WHATWG), such a page is read as UTF-8.
        if candidate and candidate.lower().replace("_", "-").startswith(("utf-16", "utf-32")):
            candidate = "utf-8"
        from_page = _page_codec(candidate)
        if from_page is not None:
            return from_page
    return _undeclared(raw)


def _page_codec(label: str | None) -> str | None:
    """The codec a browser decodes a page labelled `label` with; None when the label names
    no encoding a page is read in."""
    if not label:
        return None
    label = _BROWSER_LABELS.get(label.strip().lower(), label)
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name (RFC 2231's %00)
        return None
    if name in _NOT_PAGE_ENCODINGS:
        return None
    return _BROWSER_CODECS.get(name, name)


def _undeclared(raw: bytes) -> str:
    """UTF-8, unless no byte beyond ASCII is part of a valid UTF-8 sequence: then the page was
    written in a legacy single-byte encoding, and windows-1252 is the common one (a browser's
    default). A UTF-8 page with a few stray bytes stays UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        if not _DECODED_BEYOND_ASCII.search(raw.decode("utf-8", errors="replace")):
            return _WINDOWS_1252
    return "utf-8"


def _readable_html(page: str) -> tuple[str, str | None]:
    """Readable text and title of an HTML page: trafilatura first, a plain tag strip if empty
    or if the page is too large for the parser (its time grows faster than the page)."""
    text = ""
    title: str | None = None
    if len(page) > _PARSER_MAX_CHARS:
        return _strip_tags(page).strip(), fetched.one_line(_plain_title(page))
    try:
        tree = trafilatura.load_html(page)
        if tree is not None:
            title = _page_title(tree)  # before the extraction, which cleans the tree
            _flatten_crowded_paragraphs(tree)
            # Renamed, not stripped: the text nodes left by stripping 20,000 <b> took it 15 s.
            for element in tree.iter(*_INLINE_MARKUP_TAGS):
                element.tag = "span"
        document = trafilatura.bare_extraction(
            tree,
            with_metadata=True,
            include_comments=False,
            # Headings, paragraphs and lists kept as markdown: plain text runs a heading into
            # the paragraph after it, and the analyzers see one paragraph and no heading.
            include_formatting=True,
            include_tables=tree is None or _table_work(tree) <= _TABLE_WORK_MAX,
        )
        if document is not None and not isinstance(document, dict):
            text = document.text or ""
            title = title or document.title
    # trafilatura raises assorted parser errors on hostile markup; the tag strip covers them.
    except Exception:
        pass
    if not text.strip():
        text = _strip_tags(page)
    return text.strip(), fetched.one_line(title)


def _page_title(tree: Any) -> str | None:
    """A page's title as its author gave it: its `og:title`, else its whole `<title>` (as a
    browser's tab shows it, and as a page too large for the parser gets it), else its first
    `<h1>` a browser shows. trafilatura's own pick cuts `<title>` at ` | ` and skips a part
    holding a `.`: "Python 3.12 released | Blog" was titled "Blog", and a `<noscript>`
    heading ("Enable JavaScript") beat the `<title>`."""
    for meta in tree.iter("meta"):
        named = (meta.get("property") or meta.get("name") or "").strip().lower()
        if named == "og:title" and (content := " ".join((meta.get("content") or "").split())):
            return content
    return _first_text(tree, "title", _NOT_THE_PAGES_TITLE) or _first_text(
        tree, "h1", _UNSHOWN_TAGS
    )


def _first_text(tree: Any, tag: str, skipped: frozenset[str]) -> str | None:
    """The text of the first `tag` element holding any, outside the `skipped` elements. One
    walk that passes over what they hold: looking up each heading's ancestors took 23 s on a
    page of 95,000 headings under 250 elements."""
    walk = etree.iterwalk(tree, events=("start",))
    for _event, element in walk:
        if element.tag in skipped:
            walk.skip_subtree()
        elif element.tag == tag and (text := " ".join(element.text_content().split())):
            return text
    return None


_UNSHOWN_TAGS = frozenset({"noscript", "template", "script", "style", "head"})
# An SVG's or MathML's <title> is its own (an icon's tooltip), not the page's: a browser's tab
# shows neither, nor one no browser parses as an element (in a <noscript> or a <template>).
_NOT_THE_PAGES_TITLE = frozenset({"svg", "math", "noscript", "template", "script", "style"})


def _flatten_crowded_paragraphs(tree: Any) -> None:
    """Replace the content of each <p> holding more than _PARAGRAPH_ELEMENTS_MAX elements by
    its text, as one piece (lxml's strip_tags leaves one text node per stripped element, and
    trafilatura reads them as slowly). HTML never nests a <p> in another: one linear pass."""
    crowded = [
        paragraph
        for paragraph in tree.iter("p")
        if sum(1 for _ in paragraph.iterdescendants()) > _PARAGRAPH_ELEMENTS_MAX
    ]
    for paragraph in crowded:
        # A line break stays one (words either side are not glued); a script's or a style's
        # code is no text, as trafilatura drops those elements.
        for line_break in paragraph.iter("br"):
            line_break.tail = "\n" + (line_break.tail or "")
        etree.strip_elements(paragraph, *_NOT_TEXT_TAGS, with_tail=False)
        text = "".join(paragraph.itertext())
        for child in list(paragraph):
            paragraph.remove(child)
        paragraph.text = text


def _table_work(tree: Any) -> int:
    """How much work trafilatura's table handling would do on `tree`, in one pass: per table,
    the sum over its own rows of the row's width squared, every row at least as wide as the
    widest (up to _SPAN_MAX) and as wide as the columns that cells spanning rows above hold in
    it (trafilatura fills them with empty cells); and per element, one for each pair of tables
    around it, as each table gathers the elements of each table nested in it."""
    work = 0
    open_tables: list[_Table] = []
    for event, element in etree.iterwalk(tree, events=("start", "end")):
        if event == "end":
            if element.tag == "table":
                table = open_tables.pop()
                widest = min(max(table.widths, default=0), _SPAN_MAX)
                work += sum(
                    max(width + held, widest) ** 2
                    for width, held in zip(table.widths, table.held, strict=True)
                )
            continue
        if element.tag == "table":
            open_tables.append(_Table())
        elif element.tag == "tr" and open_tables:
            open_tables[-1].row([cell for cell in element if cell.tag in _CELL_TAGS])
        elif element.tag in _CELL_TAGS and open_tables and element.getparent().tag in _ROW_PARENTS:
            # A cell outside any row joins the table's last row (its first, empty one if none):
            # 50,000 such cells took 7 s to extract, 100,000 took 28 s.
            open_tables[-1].join_last_row(element)
        depth = len(open_tables)
        work += depth * (depth - 1) // 2
    return work


class _Table:
    """A table's rows so far: the width of each row's own cells, and the columns cells spanning
    rows above hold in it. 400 rows of 100 cells each spanning 100 rows (880 KB) took 58 s to
    extract and made 10 MB of text: each row held up to 10,000 such columns."""

    def __init__(self) -> None:
        self.widths: list[int] = []
        self.held: list[int] = []
        self.holding = 0  # columns held in the next row
        self.released: collections.Counter[int] = collections.Counter()  # row index → columns

    def row(self, cells: list[Any]) -> None:
        self.holding -= self.released.pop(len(self.widths), 0)
        self.widths.append(0)
        self.held.append(self.holding)
        for cell in cells:
            self.join_last_row(cell)

    def join_last_row(self, cell: Any) -> None:
        if not self.widths:
            self.row([])
        columns = _span(cell.get("colspan"))
        self.widths[-1] += columns
        rows = _span(cell.get("rowspan"))
        if rows > 1:
            self.holding += columns
            self.released[len(self.widths) - 1 + rows] += columns


def _span(value: str | None) -> int:
    return min(int(value), _SPAN_MAX) if value and value.isdecimal() else 1


def _strip_tags(page: str) -> str:
    """Visible text of HTML without a parser, in one linear pass (no regex backtracking)."""
    lower = page.lower()
    pieces: list[str] = []
    position, end = 0, len(page)
    while position < end:
        opening = page.find("<", position)
        if opening < 0:
            pieces.append(page[position:])
            break
        pieces.append(page[position:opening])
        if page.startswith("<!--", opening):
            closing = page.find("-->", opening + 4)
            position = end if closing < 0 else closing + 3
            continue
        tag_end = page.find(">", opening + 1)
        if tag_end < 0:
            break
        name = _TAG_NAME.match(page, opening + 1, tag_end)
        tag = name.group(1).lower() if name else ""
        position = tag_end + 1
        if tag in _INVISIBLE_TAGS and not page.startswith("</", opening):
            closing = lower.find(f"</{tag}", position)
            after = lower.find(">", closing) if closing >= 0 else -1
            position = end if after < 0 else after + 1
        pieces.append("\n" if tag in _BLOCK_TAGS else " ")
    text = html.unescape("".join(pieces))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _plain_title(page: str) -> str | None:
    """The text of an HTML page's first <title>, found without a parser (in linear time)."""
    opening = _TITLE_OPEN.search(page)
    tag_end = page.find(">", opening.start()) if opening else -1
    closing = _TITLE_CLOSE.search(page, tag_end) if tag_end >= 0 else None
    if closing is None:
        return None
    return html.unescape(page[tag_end + 1 : closing.start()])


def _markdown_title(text: str, content_type: str) -> str | None:
    """The first `# heading` of a markdown page."""
    if content_type == "text/plain":
        return None
    for line in text.splitlines():
        if line.startswith("# "):
            return fetched.one_line(line[2:].strip().rstrip("#"))
    return None

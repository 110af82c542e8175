"""Submitted URLs to content types and resource keys (DESIGN §3, "Resource keys")."""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
import urllib.parse
from typing import Literal

import httpx
import idna
import msgspec

from menos import errors

MAX_URL_LENGTH = 2048
MAX_LABEL = 63  # RFC 1035, for a label of a host name
MAX_HOST = 253  # RFC 1035, for a whole host name in its A-label form

_FIELD = "url"
_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{11}")
_YOUTUBE_HOSTS = frozenset(
    {
        "youtube.com",
        "www.youtube.com",
        "m.youtube.com",
        "music.youtube.com",
        "youtube-nocookie.com",
        "www.youtube-nocookie.com",
    }
)
_YOUTU_BE = "youtu.be"
# Characters no host name or IP literal contains once urllib has removed brackets and user-info.
_BAD_HOST_CHAR = re.compile(r"[<>\"{}|^`\[\]%/?#@\\]")
# Path prefixes on the YouTube hosts whose next segment is the video id.
_ID_PATH_PREFIXES = frozenset({"shorts", "embed", "live", "v"})
# Embed paths of 11 id characters that name no video: a playlist (`/embed/videoseries?list=`)
# and a channel's current stream (`/embed/live_stream?channel=`). Taken as ids, every playlist
# or channel would be one and the same item.
_NOT_VIDEO_IDS = frozenset({"videoseries", "live_stream"})
_TRACKING_EXACT = frozenset(
    {
        "msclkid",
        "mc_cid",
        "mc_eid",
        "_ga",
        "_gl",
        "gbraid",
        "wbraid",
        "igshid",
        "_hsenc",
        "_hsmi",
    }
)


class Identified(msgspec.Struct, frozen=True):
    """What a submitted URL is: its content type, resource key and the URL to fetch."""

    content_type: Literal["youtube", "web"]
    resource_key: str
    source_url: str


def identify(url: str) -> Identified:
    """Classify `url` as a YouTube video or a web page; raise InvalidInput("url") if invalid."""
    parts = _split(url)
    # Without its fragment and user-info: credentials are never stored nor shown again.
    source_url = url.split("#", 1)[0].replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)
    host = _host(parts)
    if host in _YOUTUBE_HOSTS or host == _YOUTU_BE:
        video_id = _video_id(host, parts)
        if video_id in _NOT_VIDEO_IDS:
            raise errors.InvalidInput(
                _FIELD, "a playlist's or a channel's embed names no video id: send a video's URL"
            )
        if video_id is None:
            raise errors.InvalidInput(
                _FIELD,
                "YouTube URL without a valid video id (expected 11 characters of"
                " A-Z, a-z, 0-9, _ or -)",
            )
        return Identified(
            content_type="youtube", resource_key=f"yt:{video_id}", source_url=source_url
        )
    if "@" in parts.netloc:  # the page would be fetched without them, so refuse it now
        raise errors.InvalidInput(_FIELD, "URLs with user-info (user:password@) are not allowed")
    return Identified(
        content_type="web", resource_key=web_resource_key(_normalize(parts)), source_url=source_url
    )


def normalize_url(url: str) -> str:
    """Normalize a web-page URL as DESIGN §3 prescribes; raise InvalidInput("url") if invalid."""
    return _normalize(_split(url))


def web_resource_key(normalized_url: str) -> str:
    """`url:` + unpadded base64url of the first 12 bytes of SHA-256 of the normalized URL."""
    digest = hashlib.sha256(normalized_url.encode("utf-8")).digest()[:12]
    return "url:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_url(url: str, field: str) -> None:
    """Refuse what is no usable http(s) URL as `url` is refused (whitespace or control
    characters, a port outside 1 to 65535, a malformed host name), naming `field`."""
    _split(url, field)


def _split(url: str, field: str = _FIELD) -> urllib.parse.SplitResult:
    """Parse and validate a submitted URL; every rejection is an InvalidInput naming `field`."""
    if not url:
        raise errors.InvalidInput(field, "URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise errors.InvalidInput(field, f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(_forbidden_char(char) for char in url):
        raise errors.InvalidInput(field, "URL contains whitespace or control characters")
    # WHATWG parsers read a backslash as "/", urllib does not: refuse the ambiguity outright.
    if "\\" in url:
        raise errors.InvalidInput(field, "URL contains a backslash")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise errors.InvalidInput(field, f"URL cannot be parsed: {exc}") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # also out of range or not a number; 0 would mean the scheme's default
        raise errors.InvalidInput(field, "URL port must be a number from 1 to 65535")
    if parts.scheme.lower() not in ("http", "https"):
        raise errors.InvalidInput(field, "only http and https URLs are accepted")
    host = _host(parts)
    if not host:
        raise errors.InvalidInput(field, "URL has no host")
    if _BAD_HOST_CHAR.search(host):
        raise errors.InvalidInput(field, "URL host contains characters a host name cannot have")
    _a_label_host(host, field)
    # What the worker's httpx cannot request (an IPv4-style host such as `999.1.1.1` or
    # `0177.0.0.1`) would only fail in the fetch stage: refuse it now, as for callbacks.
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise errors.InvalidInput(field, f"URL cannot be parsed: {exc}") from None
    return parts


def _forbidden_char(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def _host(parts: urllib.parse.SplitResult) -> str:
    """The host without user-info, lower-cased and without a trailing dot (IPv6 unbracketed)."""
    host = (parts.hostname or "").lower()
    return host[:-1] if host.endswith(".") else host


def _a_label_host(host: str, field: str = _FIELD) -> str:
    """`host` in its ASCII form (`bücher.de` → `xn--bcher-kva.de`), as httpx will send it;
    InvalidInput naming `field` for what no request could be sent to (a `..`, a label over
    63 characters, punycode that does not decode)."""
    if ":" in host:  # an IPv6 literal
        return host
    try:
        ascii_host = host if host.isascii() else idna.encode(host).decode("ascii")
    except idna.IDNAError as exc:
        raise errors.InvalidInput(field, f"URL host is not a valid host name: {exc}") from None
    if len(ascii_host) > MAX_HOST:
        raise errors.InvalidInput(field, f"URL host is longer than {MAX_HOST} characters")
    for label in ascii_host.split("."):
        if not label:
            raise errors.InvalidInput(field, "URL host has an empty label (`..`)")
        if len(label) > MAX_LABEL:
            raise errors.InvalidInput(
                field, f"URL host has a label longer than {MAX_LABEL} characters"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise errors.InvalidInput(
                    field, f"URL host has malformed punycode ({label}): {exc}"
                ) from None
    return ascii_host


def is_video_id(text: str) -> bool:
    """Whether `text` has the shape of a YouTube video id (11 of `A-Za-z0-9_-`)."""
    return _VIDEO_ID.fullmatch(text) is not None


def _video_id(host: str, parts: urllib.parse.SplitResult) -> str | None:
    # Escapes decoded as in the query (`v=%64Qw…`): `/shorts/%64Qw…` is the same video.
    segments = [urllib.parse.unquote(segment) for segment in parts.path.split("/")[1:]]
    # One trailing slash is tolerated: /shorts/ID/ is still /shorts/ID.
    if len(segments) > 1 and segments[-1] == "":
        segments = segments[:-1]
    candidate: str | None = None
    if host == _YOUTU_BE:
        if len(segments) == 1:
            candidate = segments[0]
    elif segments == ["watch"]:
        values = urllib.parse.parse_qs(parts.query, keep_blank_values=True).get("v")
        candidate = values[0] if values else None
    elif len(segments) == 2 and segments[0] in _ID_PATH_PREFIXES:
        candidate = segments[1]
    if candidate is not None and _VIDEO_ID.fullmatch(candidate):
        return candidate  # one of _NOT_VIDEO_IDS too, which `identify` refuses
    return None


def _normalize(parts: urllib.parse.SplitResult) -> str:
    host = _a_label_host(_host(parts))  # one form per host: the IDN and its punycode dedup
    if host.startswith("www."):
        host = host[len("www.") :]
    if not host:
        raise errors.InvalidInput(_FIELD, "URL has no host")
    netloc = f"[{host}]" if ":" in host else host
    port = parts.port
    if port is not None and port not in (80, 443):
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/") or "/"
    # Escapes that are no UTF-8 keep their bytes (`%ff` and `%fe` are different pages), where
    # the default would read both as U+FFFD.
    pairs = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(
            parts.query, keep_blank_values=True, errors="surrogateescape"
        )
        if not _is_tracking_key(key)
    ]
    query = urllib.parse.urlencode(sorted(pairs), errors="surrogateescape")
    return f"https://{netloc}{path}?{query}" if query else f"https://{netloc}{path}"


def _is_tracking_key(key: str) -> bool:
    lowered = key.lower()
    return lowered.startswith("utm_") or lowered.endswith("clid") or lowered in _TRACKING_EXACT

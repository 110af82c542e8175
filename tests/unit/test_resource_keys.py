"""Submitted URLs map to the content types and resource keys of DESIGN §3."""

from __future__ import annotations

import pytest

from menos import errors
from menos.pipeline import resource_keys

VIDEO_ID = "dQw4w9WgXcQ"


@pytest.mark.parametrize(
    "url",
    [
        f"https://www.youtube.com/watch?v={VIDEO_ID}",
        f"https://youtube.com/watch?v={VIDEO_ID}",
        f"http://m.youtube.com/watch?v={VIDEO_ID}",
        f"https://music.youtube.com/watch?v={VIDEO_ID}&list=PL123",
        f"https://www.youtube.com/watch?feature=share&v={VIDEO_ID}",
        f"https://www.youtube.com/shorts/{VIDEO_ID}",
        f"https://www.youtube.com/shorts/{VIDEO_ID}/",
        f"https://www.youtube.com/embed/{VIDEO_ID}?start=10",
        f"https://www.youtube-nocookie.com/embed/{VIDEO_ID}",
        f"https://youtube-nocookie.com/embed/{VIDEO_ID}",
        f"https://www.youtube.com/live/{VIDEO_ID}",
        f"https://www.youtube.com/v/{VIDEO_ID}",
        f"https://youtu.be/{VIDEO_ID}",
        f"https://youtu.be/{VIDEO_ID}?t=42",
        f"HTTPS://WWW.YOUTUBE.COM/watch?v={VIDEO_ID}",
        f"https://www.youtube.com:443/watch?v={VIDEO_ID}",
        f"https://user@www.youtube.com/watch?v={VIDEO_ID}",
        "https://www.youtube.com/watch?v=%64Qw4w9WgXcQ",
        "https://youtu.be/%64Qw4w9WgXcQ",
        "https://www.youtube.com/shorts/%64Qw4w9WgXcQ",
    ],
)
def test_every_youtube_url_form_gives_the_video_key(url: str) -> None:
    """Every supported YouTube URL form is recognised as the same video."""
    identified = resource_keys.identify(url)
    assert identified.content_type == "youtube"
    assert identified.resource_key == f"yt:{VIDEO_ID}"


def test_video_ids_keep_their_case_and_symbols() -> None:
    """Video ids are case-sensitive and may contain `-` and `_`."""
    assert resource_keys.identify("https://youtu.be/a-B_c1D2e3F").resource_key == "yt:a-B_c1D2e3F"


def test_source_url_is_the_submitted_url_without_fragment() -> None:
    """The URL that is fetched is the one submitted, only its fragment removed."""
    identified = resource_keys.identify("https://Example.com/Page/?utm_source=x#section")
    assert identified.source_url == "https://Example.com/Page/?utm_source=x"
    video = resource_keys.identify(f"https://youtu.be/{VIDEO_ID}#t=5")
    assert video.source_url == f"https://youtu.be/{VIDEO_ID}"


@pytest.mark.parametrize(
    "url",
    [
        "https://www.youtube.com/",
        "https://www.youtube.com/watch",
        "https://www.youtube.com/watch?v=",
        "https://www.youtube.com/watch?v=short",
        f"https://www.youtube.com/watch?v={VIDEO_ID}X",
        "https://www.youtube.com/watch?v=dQw4w9WgXc!",
        "https://www.youtube.com/channel/UC38IQsAvIsxxjztdMZQtwHA",
        f"https://www.youtube.com/shorts/{VIDEO_ID}/extra",
        "https://youtu.be/",
        f"https://youtu.be/{VIDEO_ID}/extra",
        f"https://music.youtube.com/playlist?list={VIDEO_ID}",
        "https://www.youtube.com/embed/videoseries?list=PLaaaaaaaaaaaaaaaa",
        "https://www.youtube-nocookie.com/embed/videoseries?list=PLbbbbbbbbbbbbbbbb",
        "https://www.youtube.com/embed/live_stream?channel=UCaaaaaaaaaaaaaaaaaaaaaa",
    ],
)
def test_youtube_host_without_valid_id_is_rejected(url: str) -> None:
    """A YouTube URL without a valid video id is a 400 naming `url`, never fetched as a page."""
    with pytest.raises(errors.InvalidInput) as caught:
        resource_keys.identify(url)
    assert caught.value.field == "url"
    assert "video id" in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        f"https://youtube.com.evil.com/watch?v={VIDEO_ID}",
        f"https://evilyoutube.com/watch?v={VIDEO_ID}",
        f"https://youtu.be.evil.com/{VIDEO_ID}",
        f"https://notyoutu.be/{VIDEO_ID}",
        f"https://evil.com/?u=https://www.youtube.com/watch?v={VIDEO_ID}",
        f"https://evil.com/youtube.com/watch?v={VIDEO_ID}",
    ],
)
def test_host_look_alikes_are_web_pages(url: str) -> None:
    """Hosts that only look like YouTube are treated as ordinary web pages."""
    identified = resource_keys.identify(url)
    assert identified.content_type == "web"
    assert identified.resource_key.startswith("url:")


def test_design_vector_bare_host() -> None:
    """`https://example.com` and `https://example.com/` share the documented key."""
    assert resource_keys.normalize_url("https://example.com") == "https://example.com/"
    for url in ("https://example.com", "https://example.com/"):
        identified = resource_keys.identify(url)
        assert identified.content_type == "web"
        assert identified.resource_key == "url:DxFdsGK3wN0DCxaH"


def test_design_vector_full_normalization() -> None:
    """The documented messy URL normalizes to the documented URL and key."""
    url = "HTTP://WWW.Example.COM:80/a/b/?b=2&a=1&utm_source=x&UTM_Medium=y&fbclid=1#frag"
    assert resource_keys.normalize_url(url) == "https://example.com/a/b?a=1&b=2"
    assert resource_keys.identify(url).resource_key == "url:f88t3Z_9hjt9xHLK"


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://example.com/?a=%ff", "https://example.com/?a=%FF"),
        ("https://example.com/?a=%fe&%ff=", "https://example.com/?a=%FE&%FF="),
        ("https://example.com/?a=%C3%A9", "https://example.com/?a=%C3%A9"),
    ],
)
def test_query_bytes_that_are_no_utf8_are_kept(url: str, normalized: str) -> None:
    """Escapes that do not decode as UTF-8 keep their bytes, so `?a=%ff` and `?a=%fe`, two
    different pages, never share a key."""
    assert resource_keys.normalize_url(url) == normalized


@pytest.mark.parametrize(
    "key",
    [
        "utm_source",
        "UTM_Campaign",
        "fbclid",
        "GCLID",
        "dclid",
        "msclkid",
        "MC_CID",
        "mc_eid",
        "_ga",
        "_gl",
        "gbraid",
        "wbraid",
        "igshid",
        "_hsenc",
        "_HSMI",
    ],
)
def test_tracking_keys_are_dropped_case_insensitively(key: str) -> None:
    """The same page shared with tracking parameters is the same resource."""
    assert resource_keys.normalize_url(f"https://example.com/p?{key}=abc&id=7") == (
        "https://example.com/p?id=7"
    )


def test_keys_that_only_resemble_tracking_keys_are_kept() -> None:
    """Parameters that matter to the page are not mistaken for tracking."""
    url = "https://example.com/p?utm=1&clidx=2&ga=3&page=4"
    assert resource_keys.normalize_url(url) == "https://example.com/p?clidx=2&ga=3&page=4&utm=1"


def test_blank_query_values_are_kept() -> None:
    """`?a=&b` is a different page from `?` alone, so blank values stay."""
    assert (
        resource_keys.normalize_url("https://example.com/p?b&a=") == "https://example.com/p?a=&b="
    )


def test_query_sorted_by_key_then_value_and_form_encoded() -> None:
    """Parameter order does not create a second resource; values are form-encoded."""
    first = resource_keys.normalize_url("https://example.com/s?q=b&q=a&x=hello%20world")
    second = resource_keys.normalize_url("https://example.com/s?x=hello+world&q=a&q=b")
    assert first == second == "https://example.com/s?q=a&q=b&x=hello+world"


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("http://example.com:80/x", "https://example.com/x"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("http://example.com:443/x", "https://example.com/x"),
        ("https://example.com:8080/x", "https://example.com:8080/x"),
        ("http://example.com:8443/", "https://example.com:8443/"),
    ],
)
def test_ports_80_and_443_dropped_others_kept(url: str, normalized: str) -> None:
    """Default ports do not split a resource; other ports are different servers."""
    assert resource_keys.normalize_url(url) == normalized


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://user:secret@example.com/x", "https://example.com/x"),
        ("https://www.example.com./x/", "https://example.com/x"),
        ("https://www.www.example.com/", "https://www.example.com/"),
        ("https://wwwexample.com/", "https://wwwexample.com/"),
        ("https://example.com/a/b//", "https://example.com/a/b"),
        ("https://example.com/A/B", "https://example.com/A/B"),
        ("https://example.com/?", "https://example.com/"),
        ("https://example.com/?utm_source=x", "https://example.com/"),
        ("https://[2001:DB8::1]:8080/a", "https://[2001:db8::1]:8080/a"),
        ("https://BÜCHER.de/Buch", "https://xn--bcher-kva.de/Buch"),
    ],
)
def test_normalization_rules(url: str, normalized: str) -> None:
    """User-info, one `www.`, a trailing dot and trailing slashes do not change the resource."""
    assert resource_keys.normalize_url(url) == normalized


def test_credentials_in_a_url_are_never_kept() -> None:
    """A web page with user-info is refused (its fetch could not use them: SSRF rule); a
    YouTube URL is taken, its user-info left out of the stored source URL."""
    for url in (
        "https://user:secret@example.com/x",
        "https://user@example.com/",
        f"https://youtube.com@evil.com/watch?v={VIDEO_ID}",  # evil.com's page, not a video
        f"https://www.youtube.com:pass@evil.com/watch?v={VIDEO_ID}",
    ):
        with pytest.raises(errors.InvalidInput, match="user-info") as caught:
            resource_keys.identify(url)
        assert caught.value.field == "url"
    video = resource_keys.identify(f"https://me:secret@www.youtube.com/watch?v={VIDEO_ID}#t=1")
    assert video.resource_key == f"yt:{VIDEO_ID}"
    assert video.source_url == f"https://www.youtube.com/watch?v={VIDEO_ID}"


def test_different_pages_get_different_keys() -> None:
    """Two different pages never share a key."""
    first = resource_keys.identify("https://example.com/a").resource_key
    second = resource_keys.identify("https://example.com/b").resource_key
    assert first != second
    assert len(first) == len("url:") + 16


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/page",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://",
        "https:///path",
        "https://:80/",
        "https://exa mple.com/",
        " https://example.com/",
        "https://example.com/\n",
        "https://example.com/a\tb",
        "https://example.com/\x00",
        "https://example.com/\u200b",
        "https://example.com:99999/",
        "https://example.com:65536/",
        "https://example.com:0/",
        "https://xn--/",
        "https://xn--zz-zzz.com/",
        "https://a..b/",
        "https://" + "a" * 64 + ".com/",
        "https://" + ".".join(["a" * 50] * 5) + ".com/",
        "https://\u2603\u20e0.com/",
        "https://example.com:port/",
        "https://[::1/",
        "https://evil.com\\@youtube.com/",
        "https://exa<mple.com/",
        "https://" + "a" * 2040 + ".com/",
        "http://999.1.1.1/page",
        "http://0177.0.0.1/page",
        "https://8.8.8.08/",
    ],
)
def test_invalid_urls_are_rejected_naming_the_field(url: str) -> None:
    """Anything that is not a usable http(s) URL is a clear 400 on the `url` field."""
    with pytest.raises(errors.InvalidInput) as caught:
        resource_keys.identify(url)
    assert caught.value.field == "url"
    assert caught.value.message


def test_url_at_length_limit_is_accepted() -> None:
    """A URL of exactly 2048 characters is still accepted."""
    url = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    assert len(url) == 2048
    assert resource_keys.identify(url).content_type == "web"


def test_normalize_url_rejects_what_identify_rejects() -> None:
    """Normalization refuses non-HTTP URLs too."""
    with pytest.raises(errors.InvalidInput):
        resource_keys.normalize_url("mailto:someone@example.com")


def test_an_idn_and_its_punycode_are_one_resource() -> None:
    """`bücher.de` and `xn--bcher-kva.de` are the same site, so the same key."""
    unicode = resource_keys.identify("https://bücher.de/").resource_key
    punycode = resource_keys.identify("https://xn--bcher-kva.de/").resource_key
    assert unicode == punycode
    assert resource_keys.normalize_url("https://www.BÜCHER.de/a") == "https://xn--bcher-kva.de/a"


@pytest.mark.parametrize(
    "url",
    [
        "https://r3---sn-4g5e6nsz.googlevideo.com/",
        "https://my_host.example.com/",
        "https://" + "a" * 63 + ".com/",
        "https://xn--bcher-kva.de/",
        "https://[2606:4700::1111]:8443/",
    ],
)
def test_host_names_that_are_valid_on_the_web_are_accepted(url: str) -> None:
    """Host names httpx can send to (hyphens, underscores, 63-character labels) are accepted."""
    assert resource_keys.identify(url).content_type == "web"


@pytest.mark.parametrize(
    "url",
    [
        "https://www.youtube.com/embed/videoseries?list=PLaaaaaaaaaaaaaaaa",
        "https://www.youtube.com/embed/live_stream?channel=UCaaaaaaaaaaaaaaaaaaaaaa",
    ],
)
def test_a_playlists_embed_is_refused_as_naming_no_video(url: str) -> None:
    """`videoseries` is 11 id characters: "expected 11 characters" would not say what is wrong."""
    with pytest.raises(errors.InvalidInput) as caught:
        resource_keys.identify(url)
    assert "names no video" in caught.value.message

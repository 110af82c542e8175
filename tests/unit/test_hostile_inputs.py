"""Hostile inputs for URLs and keys: the rules answer InvalidInput, never crash."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
import uuid

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from menos import errors
from menos.http import pagination, schemas, validate
from menos.pipeline import resource_keys

URLISH = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda scheme, host, path, query: f"{scheme}://{host}/{path}?{query}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "javascript", ""]),
        st.one_of(
            st.sampled_from(
                [
                    "youtube.com",
                    "youtu.be",
                    "www.youtube.com.evil.com",
                    "[::1]",
                    "127.0.0.1:99999",
                    "user:pw@example.com",
                    "me@youtu.be",
                    "exa mple.com",
                    "xn--",
                ]
            ),
            st.text(max_size=40),
        ),
        st.text(max_size=60),
        st.text(max_size=60),
    ),
)


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
@hypothesis.given(URLISH)
def test_any_url_is_identified_or_refused_cleanly(url: str) -> None:
    """Whatever is submitted as a URL gets a resource key or a 400-style error, never a crash."""
    try:
        found = resource_keys.identify(url)
    except errors.InvalidInput as exc:
        assert exc.field == "url"
        return
    assert found.resource_key.startswith(("yt:", "url:"))
    assert "@" not in urllib.parse.urlsplit(found.source_url).netloc  # no credentials kept
    if found.content_type == "web":
        normalized = resource_keys.normalize_url(url)
        assert resource_keys.normalize_url(normalized) == normalized


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(st.text(max_size=200))
def test_any_cursor_is_decoded_or_refused_cleanly(cursor: str) -> None:
    """A forged list cursor is a 400 naming `cursor`, never a crash."""
    try:
        pagination.decode(cursor)
    except errors.InvalidInput as exc:
        assert exc.field == "cursor"


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_cursor_times_outside_the_calendar_in_utc_are_refused(at: str) -> None:
    """A forged cursor whose time leaves the calendar once in UTC is a 400, not a 500 from
    the database."""
    cursor = base64.urlsafe_b64encode(msgspec.json.encode([at, str(uuid.uuid4())])).decode()
    with pytest.raises(errors.InvalidInput) as caught:
        pagination.decode(cursor)
    assert caught.value.field == "cursor"


def test_cursor_round_trips_in_utc() -> None:
    key = (
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        uuid.uuid4(),
    )
    assert pagination.decode(pagination.encode(key)) == (key[0].astimezone(dt.UTC), key[1])


def test_a_comma_separated_tag_of_the_longest_length_is_kept() -> None:
    """`a, <100 characters>` holds two tags, the second of 100 characters, as in frontmatter."""
    longest = "y" * validate.MAX_TAG
    assert validate.tags([f"a, {longest} ,b"], comma_separated=True) == ["a", longest, "b"]
    with pytest.raises(errors.InvalidInput):
        validate.tags([f"a, {longest}y"], comma_separated=True)


def test_an_ingested_tag_is_measured_trimmed_as_an_uploaded_one_is() -> None:
    """A JSON list's `"   <100 characters>"` was refused by ingest, kept by upload."""
    longest = "y" * validate.MAX_TAG
    assert validate.tags([f"   {longest} "]) == [longest]
    with pytest.raises(errors.InvalidInput):
        validate.tags([f" {longest}y"])


def test_repeated_tags_count_once() -> None:
    assert validate.tags(["same"] * 51 + ["other"]) == ["same", "other"]
    with pytest.raises(errors.InvalidInput):
        validate.tags([f"t{n}" for n in range(51)])


def test_a_list_of_many_invalid_tags_names_at_most_fifty_of_them() -> None:
    """A 5 MB body of 550,000 NUL tags was answered with a fault for each (a 64 MB 400, the
    API's loop held 14 s, its memory at 1.3 GB): at most 50 invalid tags are named."""
    for values, comma_separated in ((["\x00"] * 10_000, False), (["\x00," * 10_000], True)):
        with pytest.raises(errors.InvalidInput) as raised:
            validate.tags(values, comma_separated=comma_separated)
        assert 1 + len(raised.value.also) == validate.MAX_TAGS
        assert raised.value.field == "tags[0]"


def test_a_list_of_many_distinct_tags_is_refused_as_too_many() -> None:
    """Past the 50th distinct tag the list is refused for its length, whatever follows."""
    with pytest.raises(errors.InvalidInput) as raised:
        validate.tags([f"t{n}" for n in range(100_000)] + ["x" * 101])
    assert (raised.value.field, raised.value.also) == ("tags", ())


@pytest.mark.parametrize(
    "url",
    [
        "http://1.1.1.1:99999/hook",
        "http://1.1.1.1:65536/hook",
        "http://1.1.1.1:0/hook",
        "http://1.1.1.1/a hook",
        "http://1.1.1.1/\u202ekooh",
        "http://1.1.1.1/a\x7fb",
        "https://xn--/hook",
        "https://xn--zz-zzz.com/hook",
        "https://a..b/hook",
        "https://" + "a" * 64 + ".com/hook",
    ],
)
async def test_a_malformed_callback_url_is_refused_at_submission(url: str) -> None:
    """A callback URL the `url` field would refuse (port, spaces, bidi controls, host) is a
    400 on `callback_url`, before any delivery is tried."""
    with pytest.raises(errors.InvalidInput) as caught:
        await validate.callback_url(url, allow_private=False)
    assert caught.value.field == "callback_url"
    assert caught.value.message.startswith("URL ")


async def test_a_well_formed_public_callback_url_is_kept() -> None:
    """A public callback URL with a port is accepted, trimmed."""
    url = await validate.callback_url(" http://1.1.1.1:8443/hook?a=1 ", allow_private=False)
    assert url == "http://1.1.1.1:8443/hook?a=1"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"text": "a \\ud800 b"}', "unpaired UTF-16 surrogate"),
        (b'{"text": "a \\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"text": "a \\udc00 b"}', "surrogate"),
        (b'{"text": "cut', "truncated"),
        (b'{"text": "x"', "truncated"),
        (b'\xef\xbb\xbf{"text": "x"}', "starts with a byte order mark"),
    ],
)
def test_a_json_body_is_told_what_is_wrong_with_it(body: bytes, problem: str) -> None:
    """msgspec calls an unpaired high surrogate escape "truncated" input, and a body after a
    byte order mark "invalid character (byte 0)": both are named."""
    with pytest.raises(errors.InvalidInput) as refused:
        schemas.decode(body, schemas.ContentText)
    assert refused.value.field == "body"
    assert problem in refused.value.message

"""Hostile inputs for URLs and keys: the rules answer InvalidInput, never crash."""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st

from menos import errors
from menos.http import pagination
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

"""A pipeline context for tests: it reaches no host outside the test."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import httpx

from menos.pipeline import analyzers, stages


def offline_context(
    http: httpx.AsyncClient, analyzer: analyzers.Analyzer, **overrides: Any
) -> stages.Context:
    """`analyzer` with one client for pages and metadata, a 1 KiB page cap and an oEmbed
    endpoint nobody listens on; `overrides` are other Context fields (a clock)."""
    return stages.Context(
        http=http,
        metadata_http=http,
        analyzer=analyzer,
        max_body_bytes=1024,
        oembed_url="http://127.0.0.1:9/oembed",
        youtube_languages=("en",),
        **overrides,
    )


class QuietPort:
    """A worker stand-in that holds the job throughout, is never cancelled and persists
    nothing; tests override what they watch."""

    async def boundary(self, stage: stages.Stage) -> None:
        return None

    async def interruptible(self, work: Coroutine[Any, Any, None]) -> None:
        await work

    async def save_fetched(self, body: str, title: str | None, metadata: dict[str, Any]) -> None:
        return None

    async def vocabulary(self) -> list[str]:
        return []

    async def known_tags(self, tags: list[str]) -> set[str]:
        return set()

    async def persist(self, result: dict[str, Any], tags: list[str]) -> None:
        return None

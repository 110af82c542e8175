"""Analyzers: turn prepared text into a JSON answer the parse stage validates."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class Request(msgspec.Struct, frozen=True):
    """What an analyzer is asked to read."""

    text: str
    title: str | None
    content_type: str
    tags: list[str]
    vocabulary: list[str]  # the owner's most used tags, most used first


class Answer(msgspec.Struct, frozen=True):
    """An analyzer's raw answer; `text` is what the parse stage reads."""

    text: str
    model: str
    prompt: str | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None  # the server's; `length`: cut off at its token limit


class Analyzer(Protocol):
    """One analysis call, plus the single repair call the parse stage may ask for."""

    name: str

    async def analyze(self, request: Request) -> Answer: ...

    async def repair(self, request: Request, first: Answer) -> Answer: ...

"""Acceptance fixtures: real menos processes on a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fake_llm, processes


@pytest.fixture
def menos(database_url: str, tmp_path: Path) -> Iterator[processes.Menos]:
    """Starts processes on demand; stops them all after the test."""
    started = processes.Menos(database_url, tmp_path)
    yield started
    started.stop()


@pytest.fixture
def llm() -> Iterator[fake_llm.FakeLLM]:
    """An OpenAI-compatible server on 127.0.0.1."""
    with fake_llm.running() as server:
        yield server

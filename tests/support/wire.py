"""A response body as the network gives it, for tests of how bodies are read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


class Wire(httpx.AsyncByteStream):
    """`data` as a server sends it: raw bytes in 64 KiB network reads, not decoded yet."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]

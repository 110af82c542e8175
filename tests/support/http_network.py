"""A fake network for httpx's connection layer: every TCP connection is answered by a handler.

Unlike `httpx.MockTransport`, requests go through a real transport's connection pool (and
`ssrf.PinnedTransport`'s connection checks), so tests see where connections were opened and
for which names, while each HTTP/1.1 request is answered by `handler` in memory.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import h11
import httpcore
import httpx

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class HandlerNetwork(httpcore.AsyncNetworkBackend):
    """Records each TCP connection (address, port) and answers its requests with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connected: list[tuple[str, int]] = []
        self.tls_names: list[str | None] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        return _HandlerStream(self)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets on this network")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _HandlerStream(httpcore.AsyncNetworkStream):
    """One connection: parses what the client writes and queues the handler's answers."""

    def __init__(self, network: HandlerNetwork) -> None:
        self._network = network
        self._scheme = "http"
        self._server = h11.Connection(h11.SERVER)
        self._outgoing = bytearray()
        self._request = h11.Request(method="GET", target="/", headers=[("host", "-")])
        self._body = bytearray()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return  # an empty body's write; to h11 empty data would mean end of stream
        self._server.receive_data(buffer)
        while True:
            event = self._server.next_event()
            if isinstance(event, h11.Request):
                self._request, self._body = event, bytearray()
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                await self._answer(self._request, bytes(self._body))
                self._server.start_next_cycle()
            else:
                return  # NEED_DATA: the rest comes with the next write

    async def _answer(self, request: h11.Request, body: bytes) -> None:
        headers = [(name.decode(), value.decode()) for name, value in request.headers]
        host = dict(headers)["host"]
        url = f"{self._scheme}://{host}{request.target.decode()}"
        answer: Any = self._network.handler(
            httpx.Request(request.method.decode(), url, headers=headers, content=body)
        )
        response: httpx.Response = await answer if inspect.isawaitable(answer) else answer
        content = response.read()
        kept = [
            (name, value)
            for name, value in response.headers.raw
            if name.lower() not in (b"content-length", b"transfer-encoding")
        ]
        kept.append((b"content-length", str(len(content)).encode()))
        self._outgoing += (
            self._server.send(h11.Response(status_code=response.status_code, headers=kept)) or b""
        )
        self._outgoing += self._server.send(h11.Data(data=content)) or b""
        self._outgoing += self._server.send(h11.EndOfMessage()) or b""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        chunk = bytes(self._outgoing[:max_bytes])
        del self._outgoing[:max_bytes]
        return chunk

    async def aclose(self) -> None:
        return None

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._network.tls_names.append(server_hostname)
        self._scheme = "https"
        return self

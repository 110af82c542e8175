"""How `bin/api` serves the app: uvicorn, with limits on what a client can hold.

- The head of a request (request line and headers) must arrive within HEADERS_DEADLINE_S of
  the connection opening or of the previous answer: otherwise a client sending nothing, or a
  header byte now and then, keeps a connection (a file descriptor) forever, and enough of them
  leave none for anyone else.
- An answer must be read: a connection whose client reads nothing of what it was sent (or
  whose network acknowledges nothing) for UNREAD_DEADLINE_S is dropped. Otherwise a client
  that sends requests and never reads the answers holds its connection, the answers queued
  for it and the kernel's megabytes of send buffer forever, the keep-alive and head
  deadlines included (the server waits for the answer to drain, or the close to flush).
- The head of a request may be at most HEAD_MAX_BYTES: the parser keeps a header it has not
  seen the end of, so a client sending one endless header line fills the memory.
- The process may open as many files as its hard limit allows, not the 1,024 of most shells.
- An accept that fails for want of files is logged once in a while, not thousands of times a
  second.
- A request the parser refuses is answered with problem details and its connection closed:
  among them one carrying both Content-Length and Transfer-Encoding (RFC 9112 §6.1: a proxy
  in front may have read its body differently), control characters in a header, and a
  transfer coding other than chunked (501: the parser would pass the body on still coded).
- A request still running when the shutdown's grace ends is answered 503, not uvicorn's
  plain-text 500; one whose answer had begun (a client reading none of it) has its connection
  aborted, not logged with a traceback, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import resource
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
import uvicorn
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from menos.http import errors as http_errors

log = structlog.get_logger("menos.http")


class _RefusalLoggedOnce(logging.Filter):
    """uvicorn's warning at each request its parser refuses: any client could write it at
    will, and the refusal has its own line (`request_refused`, info)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Invalid HTTP request received."


logging.getLogger("uvicorn.error").addFilter(_RefusalLoggedOnce())

HEADERS_DEADLINE_S = 10.0
HEAD_MAX_BYTES = 64 * 1024
UNREAD_DEADLINE_S = 60.0
SHUTDOWN_GRACE_S = 5
_ACCEPT_ERRORS_EVERY_S = 10.0


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the head just parsed is over HEAD_MAX_BYTES."""


class _UpgradeWithBody(Exception):
    """Raised in a parser callback: a request asking to switch protocols declares a body,
    which the parser does not read as its body (it stops at the head's end)."""


class _UnsupportedCoding(Exception):
    """Raised in a parser callback: a transfer coding other than chunked (`gzip, chunked`),
    which the parser passes over, so the app would read the coded body as it stands
    (RFC 9112 §6.1: a server answers a coding it does not know with 501)."""


class HeadersInTime(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools' C parser), closing a connection whose next
    request's head has not arrived within HEADERS_DEADLINE_S or is over HEAD_MAX_BYTES,
    answering what the parser refuses with a problem once the answers before it are out, and
    reading on as HTTP after a request asking to switch protocols."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_due: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = None  # bytes read since a head began, until it ends
        self._head_began = False  # in the read being parsed
        self._read = self._after_upgrade = b""
        self._refusal: bytes | None = None  # due once the requests before it are answered
        self._serving: asyncio.Task[None] | None = None  # the app's task of the latest request
        self._wait_for_headers()
        sock = transport.get_extra_info("socket")
        # The kernel ends a connection whose peer's window stays shut (or whose data stays
        # unacknowledged) this long: every way of not reading, a close waiting to flush too.
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):  # not TCP (a Unix socket)
                timeout_ms = int(UNREAD_DEADLINE_S * 1000)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)

    def data_received(self, data: bytes) -> None:
        while data:
            if self.transport.is_closing() or self._refusal is not None:
                return
            self._read, self._after_upgrade = data, b""
            self._parse(data)
            # What followed a request asking to switch protocols (answered as HTTP/1.1):
            # the parser stopped there, and the rest of the read is the next request's.
            data = self._after_upgrade

    def _unsupported_upgrade_warning(self) -> None:
        """A request asking to switch protocols (`Upgrade: h2c`, a WebSocket): none is served,
        it was answered as HTTP/1.1. The parser stops reading at its end, and the rest of
        the read (a pipelined request, a POST's body) was dropped: the next read's bytes,
        a body included, were then taken for a request."""
        upgrade = sys.exc_info()[1]  # called while uvicorn handles HttpParserUpgrade
        offset = upgrade.args[0] if upgrade is not None else len(self._read)
        self._after_upgrade = self._read[offset:]

    def _parse(self, data: bytes) -> None:
        self._head_began = False
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return
        # A head begun in this read counts what the parser took of it, not the whole read:
        # what came before it (the requests pipelined ahead of it, a body) is no part of it.
        # The header line it has not seen the end of is left out, at most this one read.
        # A head begun in an earlier read has all of this one.
        if self._head_began:
            self._head_bytes = self._parsed_head_bytes()
        else:
            self._head_bytes += len(data)
        if self._head_bytes > HEAD_MAX_BYTES:
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_began = True

    def _parsed_head_bytes(self) -> int:
        """The size of the request line's target and the headers parsed so far."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_headers_complete(self) -> None:
        # The count in _parse sees only the reads before the one ending the head: a
        # head sent as 60 KiB then 60 KiB, or all at once, was served. Its parsed size is
        # checked here too (raising stops the parser; send_400_response answers).
        if self._parsed_head_bytes() > HEAD_MAX_BYTES:
            raise _HeadTooLarge
        # Its body would be read on as the next request (one the client never meant, run
        # with whatever key it holds), and the request itself served without it.
        if self.parser.should_upgrade() and self._declares_body():
            raise _UpgradeWithBody("a request asking to switch protocols must not have a body")
        coding = self._unsupported_coding()
        if coding is not None:
            raise _UnsupportedCoding(
                f"the transfer coding {coding!r} is not supported: send the body as it is,"
                " or chunked"
            )
        self._head_bytes = None
        super().on_headers_complete()
        if self._headers_due is not None:
            self._headers_due.cancel()  # the head has arrived
            self._headers_due = None

    def _declares_body(self) -> bool:
        return any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in self.headers
        )

    def _unsupported_coding(self) -> str | None:
        """A coding before a final `chunked`; one that is not chunked last is the parser's
        400 (RFC 9112 §6.3: the body's length cannot be known)."""
        codings = [
            coding.strip().decode("latin-1")
            for name, value in self.headers
            if name == b"transfer-encoding"
            for coding in value.lower().split(b",")
            if coding.strip()
        ]
        if not codings or codings[-1] != "chunked":
            return None
        return next((coding for coding in codings if coding != "chunked"), None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Also when the client still sends the body of the request just answered (an answer
        # given before reading it: 401, 413): that body, then the next head, are due in time.
        if not self._answering():
            self._wait_for_headers()
        # The request refused may be the one just started from the pipeline, refused in
        # its body: it is answered now, as _refuse answers one the app already serves.
        if self._refusal is not None and not self.pipeline:
            if self._refused_in_body():
                self._answer_refused_body()
            elif not self._answering():
                self._send_refusal()

    def send_400_response(self, msg: str) -> None:
        """A request the parser refused (a control character in a header, Content-Length
        and Transfer-Encoding both, a bad request line): problem details, not plain text."""
        reason = sys.exc_info()[1]  # called while uvicorn handles the parser's error
        if reason is not None and isinstance(reason.__context__, _HeadTooLarge):
            self._refuse_head()
            return
        if reason is not None and isinstance(reason.__context__, _UnsupportedCoding):
            self._refuse(501, "Transfer coding not supported", str(reason.__context__))
            return
        if reason is not None and reason.__context__ is not None:
            reason = reason.__context__  # an error in uvicorn's callback ("CONNECT host:port")
        detail = "not a valid HTTP/1.1 request" + (f": {reason}" if reason else "")
        self._refuse(400, "Invalid input", detail)

    def _refuse_head(self) -> None:
        detail = f"the request head is over {HEAD_MAX_BYTES} bytes"
        self._refuse(431, "Request header fields too large", detail)

    def _refuse(self, status: int, title: str, detail: str) -> None:
        """Answer a request the app never saw with a problem, and close the connection."""
        log.info("request_refused", status=status, detail=detail)
        body, headers = _problem_parts(status, title, detail)
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        self._refusal = b"".join(head) + b"\r\n" + body
        if self._refused_in_body():
            # The parser failed in the body of the request the app is reading (a bad chunk
            # size, a framing other than chunked): the rest of it never comes, and its answer
            # would be a 408 once the body's deadline passed. This refusal is its answer.
            self._answer_refused_body()
            return
        # httptools parses ahead of the answers: the refusal of a pipelined request must not
        # overtake (and, closing the connection, drop) the answers of the requests before it.
        if self._answering() or self.pipeline:
            self.flow.pause_reading()
            return
        self._send_refusal()

    def _send_refusal(self) -> None:
        if self._refusal is not None and not self.transport.is_closing():
            self.transport.write(self._refusal)
            self.transport.close()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        running = set(self.tasks)
        super()._start_asgi_task(cycle, self._cut_off_when_cancelled(cycle, app))
        self._serving = next(iter(self.tasks - running), None)

    def _cut_off_when_cancelled(self, cycle: Any, app: Any) -> Any:
        """`app`, whose request cancelled once its answer began (the shutdown's grace ended
        while a client read none of it) has its connection aborted: uvicorn logged the
        cancellation with a traceback, and a close would wait for the unread answer to flush
        (`guarded` answers 503 to a request cancelled before its answer began)."""

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
            except asyncio.CancelledError:
                if cycle.disconnected:  # a refused body (_answer_refused_body), a client gone
                    return
                log.info("request_cut_off", method=scope.get("method"), path=scope.get("path"))
                # Set now, not at connection_lost: uvicorn then neither logs the answer as
                # unfinished nor writes another.
                cycle.disconnected = True
                self.transport.abort()

        return serve

    def _answer_refused_body(self) -> None:
        """Send the refusal as the answer of the request the app serves, and stop serving it:
        a route that does not read the body (a cancel) must not act on a refused request,
        nor its answer be written after the refusal."""
        assert self.cycle is not None
        self.cycle.disconnected = True
        self.cycle.message_event.set()
        if self._serving is not None:
            self._serving.cancel()  # before it began, or while it waits for the body
        self._send_refusal()

    def _refused_in_body(self) -> bool:
        """Whether the request refused is the one the app is serving, before its answer began
        and with its body not all read."""
        cycle = self.cycle
        return (
            cycle is not None
            and not self.pipeline
            and cycle.more_body
            and not cycle.response_started
            and not cycle.response_complete
        )

    def _answering(self) -> bool:
        """Whether a request's head has arrived and its answer is not complete yet."""
        return self.cycle is not None and not self.cycle.response_complete

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None
        super().connection_lost(exc)

    def _wait_for_headers(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        self._headers_due = self.loop.call_later(HEADERS_DEADLINE_S, self._headers_late)

    def _headers_late(self) -> None:
        self._headers_due = None
        if not self._answering() and not self.transport.is_closing():
            self.transport.close()


def guarded(app: ASGIApp) -> ASGIApp:
    """`app`, answering 503 to a request the shutdown cancels."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watch)
        except asyncio.CancelledError:
            if started:
                raise
            # The server's shutdown ended its grace while this request still ran.
            await _problem(send, 503, "Service unavailable", "the server is shutting down")

    return handle


async def _problem(send: Send, status: int, title: str, detail: str) -> None:
    body, headers = _problem_parts(status, title, detail)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _problem_parts(status: int, title: str, detail: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of a problem answered outside the app; the connection closes."""
    problem = http_errors.Problem(
        title=title, status=status, detail=detail, type=http_errors.ABOUT_BLANK, errors=[]
    )
    body = msgspec.json.encode(problem)
    headers = [
        (b"content-type", http_errors.PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    return body, headers


def open_files_to_hard_limit() -> None:
    """Raise this process's limit on open files to its hard limit (many shells start at 1,024:
    as many connections, the database pool's and the log's included)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _AcceptErrors:
    """The loop's exception handler: an accept failing for want of files (which asyncio logs
    with a traceback at every try) is logged at most every _ACCEPT_ERRORS_EVERY_S."""

    def __init__(self) -> None:
        self._logged_at = -_ACCEPT_ERRORS_EVERY_S
        self._missed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._logged_at < _ACCEPT_ERRORS_EVERY_S:
            self._missed += 1
            return
        exc = context.get("exception")
        log.error("accept_failed", error=str(exc), since_last=self._missed)
        self._logged_at, self._missed = now, 0


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does (its own line is not logged)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            log.info("api_started", url=f"http://{host}:{self.config.port}")


def serve(app: ASGIApp, *, host: str, port: int, stop_requested: Sequence[int] = ()) -> None:
    """Serve `app` until SIGTERM, SIGINT or SIGHUP, then let requests finish for
    SHUTDOWN_GRACE_S.

    `stop_requested` holds the signals that came before this process listened for them: it
    is read once uvicorn listens, and a stop asked there ends the server once it started."""
    open_files_to_hard_limit()
    server = _Server(
        uvicorn.Config(
            guarded(app),
            host=host,
            port=port,
            http=HeadersInTime,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
    )

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(_AcceptErrors())
        await server.serve()

    # Until uvicorn's own handlers are in place, a stop signal ends the server once it started.
    # SIGHUP (the terminal running it closed), which uvicorn leaves alone, stops it so too.
    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # SIGHUP under nohup: not a stop
            signal.signal(sig, stop)
    if stop_requested:
        server.should_exit = True

    asyncio.run(run())

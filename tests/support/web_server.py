"""A web server on 127.0.0.1 with pages, redirects, an oversized page and an oEmbed endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ARTICLE = """<!doctype html><html><head><title>Why queues matter</title></head><body>
<nav>Home | About</nav>
<article><h1>Why queues matter</h1>
<p>A job queue lets a web request hand slow work to a worker process and answer at once.
PostgreSQL can hold that queue durably: a row per job, claimed with SELECT FOR UPDATE SKIP
LOCKED so that two workers never take the same job.</p>
<p>Leases and heartbeats let the system notice a worker that died, and a rescuer returns its
job to the queue. Results are written in one transaction together with an outbox row, so a
callback is sent if and only if the result was saved.</p>
</article><footer>Copyright</footer></body></html>"""


class Site:
    """What the server was asked; `url(path)` builds its addresses."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.paths: list[str] = []
        self.cookies: dict[str, str | None] = {}  # path → the Cookie header it came with

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"


@contextmanager
def running(big_bytes: int = 6 * 1024 * 1024) -> Iterator[Site]:
    """Serve until the block ends."""
    site: Site

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            site.paths.append(self.path)
            site.cookies[self.path] = self.headers.get("cookie")
            path = self.path.split("?", 1)[0]
            if path == "/article":
                self._send(200, ARTICLE.encode(), "text/html; charset=utf-8")
            elif path == "/login":
                self._send(200, ARTICLE.encode(), "text/html", cookie="session=alice-secret")
            elif path.startswith("/hop/"):
                left = int(path.rsplit("/", 1)[1])
                target = "/article" if left <= 0 else f"/hop/{left - 1}"
                self._redirect(target)
            elif path == "/big":
                self._send(200, b"<p>" + b"x" * big_bytes + b"</p>", "text/html")
            elif path == "/gone":
                self._send(404, b"not here", "text/plain")
            elif path == "/oembed":
                body = {"title": "A talk about queues", "author_name": "Queue Channel"}
                self._send(
                    200, json.dumps(body).encode(), "application/json", cookie="oembed=alice"
                )
            else:
                self._send(500, b"boom", "text/plain")

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("location", location)
            self.send_header("content-length", "0")
            self.end_headers()

        def _send(
            self, status: int, body: bytes, content_type: str, cookie: str | None = None
        ) -> None:
            try:
                self.send_response(status)
                self.send_header("content-type", content_type)
                if cookie is not None:
                    self.send_header("set-cookie", f"{cookie}; Path=/")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    site = Site(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()

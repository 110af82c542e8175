"""An OpenAI-compatible chat-completions server on 127.0.0.1 whose behaviour the model name picks.

Models: `good`, `slow-<seconds>` (then good), `fenced`, `think`, `nojson` (prose, also on
repair), `nofields` (JSON without result fields), `error500`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD = {
    "summary": "A note about durable job queues on PostgreSQL.",
    "tags": ["postgresql", "job-queue", "Durable Systems"],
    "tier": "a",
    "tier_explanation": "clear and specific",
    "quality_score": 82,
    "score_explanation": ["well structured"],
    "topics": [{"name": "Databases > PostgreSQL", "confidence": "high"}],
    "entities": [{"type": "software", "name": "PostgreSQL"}],
}


def _content(model: str) -> str:
    body = json.dumps(GOOD)
    if model == "fenced":
        return f"Here you go:\n```json\n{body}\n```"
    if model == "think":
        return f"<think>Let me think {{not json}}</think>\n{body}"
    if model == "nojson":
        return "I am sorry, I cannot produce JSON today."
    if model == "nofields":
        return json.dumps({"answer": 42})
    return body


class FakeLLM:
    """Counts the requests it served; `url` is the base URL to configure."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"


@contextmanager
def running() -> Iterator[FakeLLM]:
    """Serve until the block ends."""
    fake: FakeLLM

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            fake.requests.append(request)
            model = str(request.get("model", "good"))
            if model.startswith("slow-"):
                time.sleep(float(model.removeprefix("slow-")))
            if model == "error500":
                self._send(500, {"error": {"message": "boom"}})
                return
            self._send(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": _content(model)},
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
                },
            )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake = FakeLLM(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()

"""Signed callbacks end to end: real bin/api, bin/worker and dispatcher, a receiver on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import httpx
import pytest
import standardwebhooks

from tests.support import fake_llm, processes
from tests.support.processes import Menos, sql, wait_for

FAST = {"MENOS_CALLBACK_BACKOFF_S": "0.2", "MENOS_WORKER_POLL_S": "0.5"}


class Received(NamedTuple):
    """One request as the receiver saw it."""

    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Webhook receiver: records every request, answers `answer(n)` to the n-th (from 1)."""

    def __init__(self, server: ThreadingHTTPServer, answer: Callable[[int], int]) -> None:
        self.server = server
        self.answer = answer
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.hang_s = 0.0  # while > 0, requests are held this long before the answer
        self.set_cookie: str | None = None  # a Set-Cookie header to answer with
        self.body = b"ok"  # what every answer holds

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def seen(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@contextmanager
def receiving(answer: Callable[[int], int] = lambda _n: 200) -> Iterator[Receiver]:
    """Serve a receiver until the block ends."""
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.requests.append(
                    Received(
                        time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                n = len(receiver.requests)
            if receiver.hang_s:
                time.sleep(receiver.hang_s)
            try:
                self.send_response(receiver.answer(n))
                if receiver.set_cookie is not None:
                    self.send_header("set-cookie", receiver.set_cookie)
                self.send_header("content-length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the dispatcher was killed while we held its request

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # a dispatcher opens many connections at once

    server = Server(("127.0.0.1", 0), Handler)
    receiver = Receiver(server, answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def dispatcher(menos: Menos, **env: str) -> subprocess.Popen[bytes]:
    """Start `bin/dispatcher`."""
    return menos.spawn(str(processes.BIN / "dispatcher"), **env)


def submit(client: httpx.Client, receiver: Receiver, text: str = "A note.") -> str:
    answer = client.post("/api/v1/content", json={"text": text, "callback_url": receiver.url})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}", params={"verbose": "true"}).json()
    return found


def delivery(client: httpx.Client, job_id: str) -> str | None:
    """The job's callback status as the API shows it (None until the event exists)."""
    callback = job(client, job_id)["callback"]
    return None if callback is None else str(callback["status"])


def callback_state(menos: Menos, job_id: str) -> dict[str, Any]:
    (found,) = sql(
        menos.database_url,
        "SELECT event_id, status, attempts, last_status_code, last_error, delivered_at "
        "FROM menos.callback_outbox WHERE job_id = $1::uuid",
        job_id,
    )
    return found


def verify(secret: str, request: Received) -> Any:
    return standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_callback_is_signed_with_the_owner_secret_and_both_during_rotation(menos: Menos) -> None:
    """The receiver verifies the callback with its secret (not another's), both during rotation."""
    with receiving() as receiver:
        menos.api()
        menos.worker()
        dispatcher(menos, **FAST)
        alice, bob = menos.key("alice"), menos.key("bob")
        with menos.client(alice["api_key"]) as client:
            job_id = submit(client, receiver)
            (request,) = wait_for(receiver.seen, what="the callback")
            body = verify(alice["webhook_secret"], request)
            with pytest.raises(standardwebhooks.WebhookVerificationError):
                verify(bob["webhook_secret"], request)
            assert request.headers["webhook-id"] == body["event_id"]
            assert request.headers["content-type"] == "application/json"
            assert request.headers["user-agent"].startswith("menos/")
            assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 30
            assert body["schema_version"] == "1" and body["type"] == "job.completed"
            assert body["data"]["job_id"] == job_id and body["data"]["status"] == "completed"
            assert body["data"]["result_summary"]["summary"]
            wait_for(
                lambda: delivery(client, job_id) == "delivered",
                what="the delivery to be recorded",
            )
            shown = job(client, job_id)["callback"]
            assert shown["attempts"] == 1 and shown["last_status_code"] == 200

            rotated = menos.command("keys", "rotate-secret", "--owner", "alice")
            assert rotated.returncode == 0, rotated.stderr
            new_secret = rotated.stdout.strip()
            submit(client, receiver, "Another note.")
            second = wait_for(lambda: receiver.seen()[1:], what="the second callback")[0]
    assert len(second.headers["webhook-signature"].split(" ")) == 2
    for secret in (new_secret, alice["webhook_secret"]):
        verify(secret, second)


def test_a_cookie_a_receiver_set_for_one_owner_is_not_sent_for_another(menos: Menos) -> None:
    """A session cookie a receiver answered one owner's callback with never reaches another's."""
    with receiving() as receiver:
        menos.api()
        menos.worker()
        dispatcher(menos, **FAST)
        receiver.set_cookie = "session=alice-secret; Path=/"
        with menos.client(menos.key("alice")["api_key"]) as alice:
            submit(alice, receiver)
            wait_for(receiver.seen, what="alice's callback")
        receiver.set_cookie = None
        with menos.client(menos.key("bob")["api_key"]) as bob:
            submit(bob, receiver)
            wait_for(lambda: receiver.seen()[1:], what="bob's callback")
    assert [request.headers.get("cookie") for request in receiver.seen()] == [None, None]


def test_completed_failed_and_cancelled_jobs_each_send_one_event(
    menos: Menos, llm: fake_llm.FakeLLM
) -> None:
    """Each terminal outcome sends exactly one event of its type, with the job's details."""
    with receiving() as receiver:
        menos.api()
        dispatcher(menos, **FAST)
        key = menos.key("alice")
        with menos.client(key["api_key"]) as client:
            cancelled = submit(client, receiver, "Cancel me.")
            assert client.post(f"/api/v1/jobs/{cancelled}/cancel").status_code == 200
            failed = submit(client, receiver, "Fail me.")
            failing = menos.worker(
                MENOS_ANALYZER="openai", MENOS_LLM_BASE_URL=llm.url, MENOS_LLM_MODEL="error500"
            )
            wait_for(lambda: job(client, failed)["status"] == "failed", what="the failure")
            failing.send_signal(signal.SIGTERM)
            assert failing.wait(timeout=30) == 0
            menos.worker()
            completed = submit(client, receiver, "Complete me.")
            wait_for(lambda: job(client, completed)["status"] == "completed", what="completion")
            wait_for(
                lambda: all(
                    delivery(client, j) == "delivered" for j in (cancelled, failed, completed)
                ),
                what="three deliveries",
            )
    bodies = {json.loads(r.body)["data"]["job_id"]: json.loads(r.body) for r in receiver.seen()}
    assert (
        len(receiver.seen()) == 3 and len({r.headers["webhook-id"] for r in receiver.seen()}) == 3
    )
    assert {j: b["type"] for j, b in bodies.items()} == {
        cancelled: "job.cancelled",
        failed: "job.failed",
        completed: "job.completed",
    }
    assert bodies[failed]["data"]["error_code"] == "LLM_CALL_ERROR"
    assert bodies[failed]["data"]["result_summary"] is None
    assert bodies[cancelled]["data"]["status"] == "cancelled"
    assert bodies[completed]["data"]["result_summary"]["tags"]


def test_receiver_failing_twice_then_succeeding_gets_three_identical_bodies(
    menos: Menos,
) -> None:
    """Two failures are retried after the backoff and 4x it; all three requests are the same."""
    with receiving(lambda n: 500 if n <= 2 else 200) as receiver:
        menos.api()
        menos.worker()
        dispatcher(menos, **FAST)
        key = menos.key("alice")
        with menos.client(key["api_key"]) as client:
            job_id = submit(client, receiver)
            wait_for(
                lambda: delivery(client, job_id) == "delivered",
                what="the third attempt to be recorded",
            )
    first, second, third = receiver.seen()
    assert first.body == second.body == third.body
    assert (
        first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    )
    for request in (first, second, third):
        verify(key["webhook_secret"], request)
    assert second.at - first.at >= 0.2
    assert third.at - second.at >= 0.8
    state = callback_state(menos, job_id)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("delivered", 3, 200)
    audited = sql(
        menos.database_url,
        "SELECT detail::text AS detail FROM menos.audit_event "
        "WHERE event = 'audit.callback_delivery' AND subject = $1::uuid ORDER BY audit_id",
        job_id,
    )
    details = [json.loads(r["detail"]) for r in audited]
    assert [(d["attempt"], d["status_code"], d["status"]) for d in details] == [
        (1, 500, "pending"),
        (2, 500, "pending"),
        (3, 200, "delivered"),
    ]
    from prometheus_client.parser import text_string_to_metric_families

    def deliveries() -> dict[str, float]:
        text = httpx.get(f"{menos.base_url}/metrics", timeout=10).text
        return {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "menos_callback_deliveries_total"
        }

    assert wait_for(
        lambda: deliveries() == {"retry": 2.0, "delivered": 1.0}, what="delivery metrics flushed"
    )


def test_receiver_always_failing_ends_failed_and_the_job_keeps_its_status(
    menos: Menos,
) -> None:
    """Three failed attempts leave the callback failed, no fourth comes, the job stays completed."""
    with receiving(lambda _n: 503) as receiver:
        menos.api()
        menos.worker()
        dispatcher(menos, **FAST)
        key = menos.key("alice")
        with menos.client(key["api_key"]) as client:
            job_id = submit(client, receiver)
            wait_for(
                lambda: delivery(client, job_id) == "failed",
                what="the callback to end failed",
            )
            time.sleep(1.0)  # longer than the last backoff: a fourth attempt would show
            shown = job(client, job_id)
    assert len(receiver.seen()) == 3
    assert shown["status"] == "completed"
    assert shown["callback"]["attempts"] == 3
    assert shown["callback"]["last_status_code"] == 503
    assert shown["callback"]["last_error"].startswith("HTTP 503")


def test_a_refusal_is_recorded_as_one_line_of_visible_text(menos: Menos) -> None:
    """A receiver's answer is quoted in `last_error` (and the dispatcher's log lines): its
    escape sequences (a window title, a cleared screen) reached an operator's terminal."""
    with receiving(lambda _n: 500) as receiver:
        receiver.body = b"\x1b]0;pwned\x07\x1b[2J\rbusy\x00 now"
        menos.api()
        menos.worker()
        dispatcher(menos, MENOS_CALLBACK_BACKOFF_S="30")
        with menos.client(menos.key("alice")["api_key"]) as client:
            job_id = submit(client, receiver)
            # The attempt is counted as its request goes out, its outcome written after the
            # answer: wait for the outcome.
            wait_for(
                lambda: (job(client, job_id)["callback"] or {}).get("last_error"),
                what="the first attempt's outcome to be recorded",
            )
            shown = job(client, job_id)
    assert shown["callback"]["attempts"] == 1
    assert shown["callback"]["last_error"] == "HTTP 500: ]0;pwned [2J busy now"


def test_a_failed_event_is_delivered_again_by_the_documented_statement(menos: Menos) -> None:
    """docs/sql.md's statement gives a failed event a new round: the mended receiver gets the
    same body and `webhook-id`, signed; the event ends delivered."""
    doc = (processes.ROOT / "docs" / "sql.md").read_text(encoding="utf-8")
    (statement,) = [
        block
        for block in re.findall(r"```sql\n(.*?)```", doc, flags=re.S)
        if block.startswith("UPDATE menos.callback_outbox")
    ]
    with receiving(lambda n: 503 if n <= 3 else 200) as receiver:
        menos.api()
        menos.worker()
        dispatcher(menos, **FAST)
        key = menos.key("alice")
        with menos.client(key["api_key"]) as client:
            job_id = submit(client, receiver)
            wait_for(lambda: delivery(client, job_id) == "failed", what="the callback to fail")
            event_id = str(callback_state(menos, job_id)["event_id"])
            sql(
                menos.database_url,
                statement.replace("01a20000-0000-7000-8000-0000000000f1", event_id),
            )
            wait_for(lambda: delivery(client, job_id) == "delivered", what="the redelivery")
            shown = job(client, job_id)["callback"]
    requests = receiver.seen()
    assert len(requests) == 4
    assert requests[3].body == requests[0].body
    assert requests[3].headers["webhook-id"] == requests[0].headers["webhook-id"] == event_id
    verify(key["webhook_secret"], requests[3])
    assert (shown["attempts"], shown["last_status_code"], shown["last_error"]) == (1, 200, None)


def test_sigkilled_dispatcher_loses_no_event(menos: Menos) -> None:
    """Killing the dispatcher mid-delivery loses nothing: the next one delivers every event."""
    with receiving() as receiver:
        menos.api()
        menos.worker()
        key = menos.key("alice")
        with menos.client(key["api_key"]) as client:
            jobs = [submit(client, receiver, f"Note {n}.") for n in range(8)]
            wait_for(
                lambda: all(job(client, j)["status"] == "completed" for j in jobs),
                what="every job to complete",
            )
            env = {**FAST, "MENOS_CALLBACK_TIMEOUT_S": "2"}
            receiver.hang_s = 5.0
            doomed = dispatcher(menos, **env)
            wait_for(lambda: len(receiver.seen()) == 8, what="every event to be in flight")
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            receiver.hang_s = 0.0
            assert all(callback_state(menos, j)["status"] == "pending" for j in jobs)
            dispatcher(menos, **env)
            wait_for(
                lambda: all(callback_state(menos, j)["status"] == "delivered" for j in jobs),
                timeout=60,
                what="every event to be delivered by the second dispatcher",
            )
    states = [callback_state(menos, j) for j in jobs]
    assert [s["attempts"] for s in states] == [2] * 8  # the killed attempt was counted
    by_id: dict[str, set[bytes]] = {}
    for request in receiver.seen():
        by_id.setdefault(request.headers["webhook-id"], set()).add(request.body)
    assert set(by_id) == {str(s["event_id"]) for s in states}
    assert all(len(bodies) == 1 for bodies in by_id.values())


@pytest.mark.parametrize(
    "callback",
    [
        "http://1.1.1.1:99999/hook",
        "http://1.1.1.1:0/hook",
        "http://1.1.1.1/a\u202eb",
        "https://xn--/",
    ],
)
def test_a_malformed_callback_url_is_a_400_on_every_route_taking_one(
    menos: Menos, callback: str
) -> None:
    """Ingest, both upload forms and reprocess refuse a callback URL with a bad port, a bidi
    control or a bad host with 400 naming `callback_url`, and queue nothing with it."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        note = client.post("/api/v1/content", json={"text": "A note."})
        assert note.status_code == 202, note.text
        answers = [
            client.post(
                "/api/v1/ingest", json={"url": "https://example.com/", "callback_url": callback}
            ),
            client.post("/api/v1/content", json={"text": "Another.", "callback_url": callback}),
            client.post(
                "/api/v1/content",
                files={"file": ("n.md", b"Text.", "text/markdown")},
                data={"callback_url": callback},
            ),
            client.post(
                f"/api/v1/content/{note.json()['content_id']}/reprocess?force=true",
                json={"callback_url": callback},
            ),
        ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert [error["field"] for error in answer.json()["errors"]] == ["callback_url"]
    jobs = sql(menos.database_url, "SELECT callback_url FROM menos.pipeline_job")
    assert jobs == [{"callback_url": None}]

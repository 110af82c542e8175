"""The chaos run's final checks catch what the kills do not excuse."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import uuid

import httpx
import standardwebhooks

from tests.chaos import driver
from tests.support.processes import wait_for

SECRET = "whsec_" + base64.b64encode(b"chaos-test-secret-of-32-bytes!!!").decode()


def _signed(event_id: str, body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    """Standard Webhooks headers signing `body` for `event_id`, as a dispatcher sends them."""
    now = dt.datetime.now(dt.UTC)
    signature = standardwebhooks.Webhook(secret).sign(event_id, now, body.decode())
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def _accepted_id(n: int = 0) -> str:
    """An event id the receiver answers 2xx on its first request."""
    ids = (str(uuid.UUID(int=i)) for i in range(1000))
    return [i for i in ids if driver._bucket(i) >= 12][n]


def test_a_delivered_event_the_receiver_only_refused_is_caught() -> None:
    """An event the receiver answered 500 every time is not a delivered callback."""
    refused = next(
        str(i) for i in (uuid.UUID(int=n) for n in range(1000)) if driver._bucket(str(i)) < 2
    )
    accepted = next(
        str(i) for i in (uuid.UUID(int=n) for n in range(1000)) if driver._bucket(str(i)) >= 12
    )
    with driver.receiver() as hook:
        hook.secret = SECRET
        for event_id in (refused, accepted):
            body = b'{"event_id": "%s"}' % event_id.encode()
            answer = httpx.post(hook.url, content=body, headers=_signed(event_id, body))
            assert answer.status_code == (500 if event_id == refused else 204)
    delivered = [{"event_id": e, "status": "delivered"} for e in (refused, accepted)]
    assert set(hook.seen) == {refused, accepted}  # both reached it: `seen` alone misses it
    assert driver.unaccepted(delivered, hook) == [refused]


def test_only_worker_lost_failures_are_excused() -> None:
    """A job failed PIPELINE_EXCEPTION during the chaos is a lost note, not a terminal job."""
    jobs = [
        {"job_id": "a", "status": "completed", "attempts": 2, "error_code": None},
        {"job_id": "b", "status": "failed", "attempts": 10, "error_code": "WORKER_LOST"},
        {"job_id": "c", "status": "failed", "attempts": 1, "error_code": "PIPELINE_EXCEPTION"},
        {"job_id": "d", "status": "cancelled", "attempts": 1, "error_code": None},
    ]
    assert [j["job_id"] for j in driver.unexpected_failures(jobs)] == ["c", "d"]


def test_a_body_not_matching_its_signature_is_caught() -> None:
    """A request whose body is not the one that was signed (or that was signed with another
    secret) is refused and reported, not counted as a delivery."""
    good, altered, other_key = _accepted_id(0), _accepted_id(1), _accepted_id(2)
    with driver.receiver() as hook:
        hook.secret = SECRET
        for event_id, sent, signed, secret in (
            (good, b'{"event_id": "%s"}' % good.encode(), None, SECRET),
            (altered, b'{"event_id": "%s", "x": 2}' % altered.encode(), b'{"x": 1}', SECRET),
            (other_key, b'{"event_id": "%s"}' % other_key.encode(), None, "whsec_b3RoZXI="),
        ):
            headers = _signed(event_id, signed or sent, secret=secret)
            answer = httpx.post(hook.url, content=sent, headers=headers)
            assert answer.status_code == (204 if event_id == good else 400)
    assert hook.forged == [altered, other_key]
    assert set(hook.accepted) == {good}


def test_an_event_failed_after_two_attempts_or_delivered_after_four_is_caught() -> None:
    """`failed` means exactly 3 counted attempts; no event is ever attempted more than 3 times."""
    events = [
        {"event_id": "ok-delivered", "status": "delivered", "attempts": 2},
        {"event_id": "ok-failed", "status": "failed", "attempts": 3},
        {"event_id": "failed-at-2", "status": "failed", "attempts": 2},
        {"event_id": "delivered-at-4", "status": "delivered", "attempts": 4},
        {"event_id": "delivered-at-0", "status": "delivered", "attempts": 0},
    ]
    assert [e["event_id"] for e in driver.miscounted(events)] == [
        "failed-at-2",
        "delivered-at-4",
        "delivered-at-0",
    ]


def test_an_event_sent_twice_but_counted_once_is_caught() -> None:
    """Two requests for an event whose outbox row counts one attempt is a delivery unaccounted."""
    twice, once = _accepted_id(0), _accepted_id(1)
    with driver.receiver() as hook:
        hook.secret = SECRET
        for event_id in (twice, twice, once):
            body = b'{"event_id": "%s"}' % event_id.encode()
            httpx.post(hook.url, content=body, headers=_signed(event_id, body))
    events = [
        {"event_id": twice, "status": "delivered", "attempts": 1},
        {"event_id": once, "status": "delivered", "attempts": 1},
    ]
    assert [e["event_id"] for e in driver.oversent(events, hook)] == [twice]


def test_a_body_other_than_the_stored_payload_is_caught() -> None:
    """Attempts of one event carry the stored payload, the same bytes every time."""
    same, changed, foreign = _accepted_id(0), _accepted_id(1), _accepted_id(2)
    stored = {e: {"event_id": e, "type": "job.completed"} for e in (same, changed, foreign)}
    sent = {
        same: [json.dumps(stored[same]), json.dumps(stored[same])],
        changed: [json.dumps(stored[changed]), json.dumps(stored[changed], indent=1)],
        foreign: [json.dumps({**stored[foreign], "type": "job.failed"})],
    }
    with driver.receiver() as hook:
        hook.secret = SECRET
        for event_id, bodies in sent.items():
            for text in bodies:
                body = text.encode()
                httpx.post(hook.url, content=body, headers=_signed(event_id, body))
    events = [{"event_id": e, "payload": stored[e]} for e in (same, changed, foreign)]
    assert driver.unlike_stored(events, hook) == [changed, foreign]


def test_a_request_cut_off_by_a_killed_dispatcher_is_no_forgery() -> None:
    """A dispatcher killed while sending leaves a request without its whole body: the chaos
    kills dispatchers, so that is no bad signature nor a body other than the stored one."""
    event_id = _accepted_id(0)
    body = b'{"event_id": "%s"}' % event_id.encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in _signed(event_id, body).items())
    with driver.receiver() as hook:
        hook.secret = SECRET
        with socket.create_connection(("127.0.0.1", hook.server.server_address[1])) as client:
            start = f"POST / HTTP/1.1\r\nhost: receiver\r\ncontent-length: {len(body)}\r\n"
            client.sendall(f"{start}{head}\r\n".encode() + body[:10])
        wait_for(lambda: event_id in hook.seen, timeout=5, every=0.01, what="the request")
    assert hook.seen == {event_id: 1}  # it reached the receiver: an attempt, counted
    assert hook.forged == []
    stored = [{"event_id": event_id, "status": "delivered", "attempts": 2, "payload": {}}]
    assert driver.unlike_stored(stored, hook) == []

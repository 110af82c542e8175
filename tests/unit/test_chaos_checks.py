"""The chaos run's final checks catch what the kills do not excuse."""

from __future__ import annotations

import uuid

import httpx

from tests.chaos import driver


def test_a_delivered_event_the_receiver_only_refused_is_caught() -> None:
    """An event the receiver answered 500 every time is not a delivered callback."""
    refused = next(
        str(i) for i in (uuid.UUID(int=n) for n in range(1000)) if driver._bucket(str(i)) < 2
    )
    accepted = next(
        str(i) for i in (uuid.UUID(int=n) for n in range(1000)) if driver._bucket(str(i)) >= 12
    )
    with driver.receiver() as hook:
        for event_id in (refused, accepted):
            answer = httpx.post(hook.url, content=b"{}", headers={"webhook-id": event_id})
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

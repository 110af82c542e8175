"""The chaos run: workers and dispatchers SIGKILLed at random and PostgreSQL restarted once,
then proof that nothing was lost (`make chaos`; CI runs it with a bounded size)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import standardwebhooks

from menos import embedded
from tests.support import fake_llm
from tests.support.processes import BIN, Menos, sql, wait_for


class Receiver:
    """Webhook receiver: a few events always fail, some fail once, the rest succeed.

    A request whose signature does not verify with the owner's secret is answered 400 and
    kept in `forged`; every body is kept, by webhook-id, to be compared with the stored one.
    A request whose body did not all arrive (its dispatcher was killed sending it) is only
    counted in `seen`.
    """

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.secret = ""  # the owner's `whsec_` secret, set once its key exists
        self.seen: dict[str, int] = {}
        self.accepted: dict[str, int] = {}  # requests answered 2xx, by webhook-id
        self.bodies: dict[str, set[bytes]] = {}  # the distinct bodies received, by webhook-id
        self.forged: list[str] = []  # webhook-ids of requests whose signature did not verify
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"


def _bucket(event_id: str) -> int:
    return hashlib.sha256(event_id.encode()).digest()[0] % 100


def authentic(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether `body` is signed with `secret` as Standard Webhooks says, for its webhook-id
    (checked with the independent `standardwebhooks`, not menos's own signing)."""
    try:
        signed = standardwebhooks.Webhook(secret).verify(body, headers)
    except (
        standardwebhooks.webhooks.WebhookVerificationError,
        standardwebhooks.webhooks.EmptyWebhookSecretError,  # no key yet: nothing is signed
        ValueError,  # a malformed header, or a body that is not JSON
    ):
        return False
    return isinstance(signed, dict) and signed.get("event_id") == headers.get("webhook-id")


@contextmanager
def receiver() -> Iterator[Receiver]:
    got: Receiver

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            event_id = self.headers.get("webhook-id", "")
            if len(body) < length:  # its sender was killed mid-request: nobody awaits an answer
                with got.lock:
                    got.seen[event_id] = got.seen.get(event_id, 0) + 1
                return
            signed = authentic(got.secret, body, dict(self.headers.items()))
            with got.lock:
                got.seen[event_id] = got.seen.get(event_id, 0) + 1
                got.bodies.setdefault(event_id, set()).add(body)
                count = got.seen[event_id]
                bucket = _bucket(event_id)
                failing = bucket < 2 or (bucket < 12 and count == 1)
                if not signed:
                    got.forged.append(event_id)
                elif not failing:
                    got.accepted[event_id] = got.accepted.get(event_id, 0) + 1
            self.send_response(400 if not signed else 500 if failing else 204)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    got = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


def submit_all(menos: Menos, key: str, jobs: int, callback: str) -> list[str]:
    """Submit `jobs` notes, retrying through outages (503, connection errors)."""
    ids: list[str] = []
    with menos.client(key) as client:
        for index in range(jobs):
            body = {
                "text": f"# Note {index}\n\nChaos note number {index} about queues.",
                "callback_url": callback,
            }
            for _ in range(200):
                try:
                    answer = client.post("/api/v1/content", json=body)
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if answer.status_code == 202:
                    ids.append(answer.json()["job_id"])
                    break
                if answer.status_code != 503:
                    raise SystemExit(
                        f"unexpected {answer.status_code}: {answer.text}\n{menos.logs()}"
                    )
                time.sleep(0.1)
            else:
                raise SystemExit("could not submit through the outage")
    return ids


def run(jobs: int, seconds: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with (
        tempfile.TemporaryDirectory(prefix="menos-chaos-") as tmp,
        receiver() as hook,
        fake_llm.running() as llm,
    ):
        home = Path(tmp) / "pg"
        pg = embedded.EmbeddedPostgres(home)
        dsn = pg.start().dsn
        subprocess.run(
            [str(BIN / "menos"), "migrate"],
            env={**os.environ, "MENOS_DATABASE_URL": dsn},
            check=True,
            capture_output=True,
        )
        menos = Menos(dsn, Path(tmp))
        stop = threading.Event()
        killer: threading.Thread | None = None
        try:
            common = {
                "MENOS_JOB_LEASE_S": "2",
                "MENOS_CALLBACK_BACKOFF_S": "0.2",
                "MENOS_CALLBACK_TIMEOUT_S": "2",
                "MENOS_ANALYZER": "openai",
                "MENOS_LLM_BASE_URL": llm.url,
                "MENOS_LLM_MODEL": "slow-0.02",
                "MENOS_WORKER_SHUTDOWN_GRACE_S": "2",
                "MENOS_JOB_MAX_ATTEMPTS": "10",
            }
            menos.env.update(common)
            menos.api()
            created = menos.key("chaos")
            key, hook.secret = created["api_key"], created["webhook_secret"]
            workers = [menos.worker("--worker-id", f"w{i}") for i in range(3)]
            dispatchers = [menos.spawn(str(BIN / "dispatcher")) for _ in range(2)]
            kills = restarts = 0

            def chaos() -> None:
                nonlocal kills, restarts
                started = time.monotonic()
                restarted = False
                generation = 0
                while not stop.is_set() and time.monotonic() - started < seconds:
                    time.sleep(rng.uniform(0.3, 1.2))
                    if not restarted and time.monotonic() - started > seconds / 2:
                        pg.stop()
                        time.sleep(1.0)
                        pg.start(detached=True)  # this thread ends: no death signal
                        restarted, restarts = True, restarts + 1
                        continue
                    pool = workers if rng.random() < 0.6 else dispatchers
                    index = rng.randrange(len(pool))
                    pool[index].send_signal(signal.SIGKILL)
                    pool[index].wait()
                    kills += 1
                    generation += 1
                    pool[index] = (
                        menos.worker("--worker-id", f"w{index}-{generation}")
                        if pool is workers
                        else menos.spawn(str(BIN / "dispatcher"))
                    )

            killer = threading.Thread(target=chaos)
            killer.start()
            submitted = submit_all(menos, key, jobs, hook.url)
            killer.join()
            stop.set()
            assert restarts == 1, "the chaos ended before PostgreSQL was restarted"

            def settled() -> bool:
                row = sql(
                    dsn,
                    "SELECT count(*) FILTER (WHERE status IN ('pending','processing')) "
                    "AS active FROM menos.pipeline_job",
                )[0]
                backlog = sql(
                    dsn, "SELECT count(*) AS n FROM menos.callback_outbox WHERE status = 'pending'"
                )[0]
                return row["active"] == 0 and backlog["n"] == 0

            wait_for(settled, timeout=300, every=1.0, what="every job and event to settle")
            figures = verify(dsn, submitted, hook)
            figures.update(kills=kills, postgres_restarts=restarts, seed=seed)
            return figures
        finally:  # never leave processes behind, also when an invariant breaks
            stop.set()
            if killer is not None:
                killer.join()
            menos.stop()
            pg.stop()


def unaccepted(delivered: list[dict[str, Any]], hook: Receiver) -> list[str]:
    """The `delivered` events the receiver never answered 2xx: callbacks lost, not delivered."""
    return [e["event_id"] for e in delivered if not hook.accepted.get(e["event_id"])]


def miscounted(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events whose counted attempts break the rule: a settled event made 1 to 3 of them, and
    a `failed` one exactly 3."""
    return [
        e
        for e in events
        if not 1 <= e["attempts"] <= 3 or (e["status"] == "failed" and e["attempts"] != 3)
    ]


def oversent(events: list[dict[str, Any]], hook: Receiver) -> list[dict[str, Any]]:
    """Events that reached the receiver more times than their counted attempts (an attempt
    counts before its request goes out)."""
    return [e for e in events if hook.seen.get(e["event_id"], 0) > e["attempts"]]


def unlike_stored(events: list[dict[str, Any]], hook: Receiver) -> list[str]:
    """Events the receiver got a body for that differs from another attempt's, or that is not
    the payload stored in the outbox."""
    return [
        e["event_id"]
        for e in events
        if len(hook.bodies.get(e["event_id"], ())) > 1
        or any(json.loads(b) != e["payload"] for b in hook.bodies.get(e["event_id"], ()))
    ]


def unexpected_failures(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs that did not complete for a reason the chaos does not excuse: kills and restarts
    may only cost a job its claims (`WORKER_LOST` after MENOS_JOB_MAX_ATTEMPTS of them)."""
    return [
        j
        for j in jobs
        if j["status"] != "completed"
        and not (j["status"] == "failed" and j["error_code"] == "WORKER_LOST")
    ]


def verify(dsn: str, submitted: list[str], hook: Receiver) -> dict[str, Any]:
    """Every invariant of the run; raises AssertionError with the evidence when one breaks."""
    jobs = sql(dsn, "SELECT job_id::text, status, attempts, error_code FROM menos.pipeline_job")
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    assert {j["job_id"] for j in jobs} == set(submitted), "jobs lost or invented"
    assert by_status.get("pending", 0) == by_status.get("processing", 0) == 0, by_status
    broken = unexpected_failures(jobs)
    assert not broken, f"jobs failed by something other than the kills: {broken[:5]}"
    results = sql(
        dsn,
        "SELECT count(*) AS n FROM menos.content c JOIN menos.pipeline_job j "
        "ON j.content_id = c.content_id WHERE j.status = 'completed' "
        "AND c.result IS NOT NULL",
    )[0]["n"]
    assert results == by_status.get("completed", 0), "completed job without its one result"
    events = sql(dsn, "SELECT event_id::text, status, attempts, payload FROM menos.callback_outbox")
    assert len(events) == len(jobs), "a terminal job without exactly one outbox event"
    failed = [e for e in events if e["status"] == "failed"]
    wrong = miscounted(events)
    assert not wrong, f"attempts outside 1-3, or failed short of 3: {wrong[:5]}"
    assert not hook.forged, f"requests whose signature did not verify: {hook.forged[:5]}"
    altered = unlike_stored(events, hook)
    assert not altered, f"bodies not identical to the stored payload: {altered[:5]}"
    sent_more = oversent(events, hook)
    assert not sent_more, f"more requests than counted attempts: {sent_more[:5]}"
    delivered = [e for e in events if e["status"] == "delivered"]
    missing = unaccepted(delivered, hook)
    assert not missing, f"delivered but never accepted (2xx) by the receiver: {missing[:5]}"
    # Each counted attempt has exactly one audit row that settled it: its recorded outcome, or
    # `lost` (rows of outcomes refused as too late say status null and do not count).
    audited = {
        r["event_id"]: r["n"]
        for r in sql(
            dsn,
            "SELECT detail ->> 'event_id' AS event_id, count(*) AS n FROM menos.audit_event"
            " WHERE event = 'audit.callback_delivery' AND detail ->> 'status' IS NOT NULL"
            " GROUP BY 1",
        )
    }
    unaudited = [e for e in events if audited.get(e["event_id"], 0) != e["attempts"]]
    assert not unaudited, [(e, audited.get(e["event_id"])) for e in unaudited[:5]]
    return {
        "jobs": len(jobs),
        "statuses": by_status,
        "events_delivered": len(delivered),
        "events_failed": len(failed),
        "lost": 0,
        "attempts_audited": sum(audited.values()),
        "duplicate_deliveries": sum(n - 1 for n in hook.seen.values() if n > 1),
        # failed events whose three counted attempts did not all reach the receiver (a
        # dispatcher killed between counting and sending, or a request cut off mid-way)
        "failed_short_of_3_requests": sum(1 for e in failed if hook.seen.get(e["event_id"]) != 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the killing lasts")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    figures = run(args.jobs, args.seconds, args.seed)
    print(json.dumps(figures))
    print(
        f"chaos: {figures['jobs']} jobs, {figures['kills']} kills, "
        f"{figures['postgres_restarts']} PostgreSQL restart, lost = 0",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

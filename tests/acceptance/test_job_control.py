"""Running menos entirely over REST: cancel, reprocess, lists, ownership, hard edges."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import httpx

from menos import db
from tests.support import fake_llm, processes, tcp_proxy
from tests.support.processes import Menos, sql, wait_for


def status_of(client: Any, job_id: str) -> str:
    return str(client.get(f"/api/v1/jobs/{job_id}").json()["status"])


def test_cancel_mid_analyze_ends_cancelled_without_result(
    menos: Menos, llm: fake_llm.FakeLLM
) -> None:
    """Cancelling a job while the model is thinking ends it cancelled at once, the call cut
    off rather than waited for; no result is written."""
    menos.api()
    menos.worker(MENOS_ANALYZER="openai", MENOS_LLM_BASE_URL=llm.url, MENOS_LLM_MODEL="slow-600")
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        answer = client.post("/api/v1/content", json={"text": "cancel me"}).json()
        job_id = answer["job_id"]
        wait_for(
            lambda: (
                client.get(f"/api/v1/jobs/{job_id}?verbose=true").json()["current_stage"]
                == "analyze"
            ),
            what="the 10-minute model call to be under way",
        )
        cancel = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert cancel.status_code == 202
        assert cancel.json() == {"job_id": job_id, "status": "processing", "cancel_requested": True}
        wait_for(lambda: status_of(client, job_id) == "cancelled", what="cancelled")
        content = client.get(f"/api/v1/content/{answer['content_id']}").json()
        again = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert content["processing_status"] == "cancelled" and content["result"] is None
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    audits = sql(
        menos.database_url,
        "SELECT detail FROM menos.audit_event WHERE event = 'audit.cancellation' ORDER BY at",
    )
    assert [a["detail"]["outcome"] for a in audits] == ["cancel_requested", "refused"]


def test_cancel_pending_is_immediate(menos: Menos) -> None:
    """A pending job cancelled before any worker runs is cancelled at once and never runs."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job_id = client.post("/api/v1/content", json={"text": "never"}).json()["job_id"]
        cancel = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert (cancel.status_code, cancel.json()) == (
            200,
            {"job_id": job_id, "status": "cancelled"},
        )
        menos.worker()
        assert status_of(client, job_id) == "cancelled"


def test_reprocess_rules(menos: Menos) -> None:
    """Reprocess answers already_active, already_completed, or submits a new job when forced."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        first = client.post("/api/v1/content", json={"text": "# Again\n\nand again"}).json()
        cid = first["content_id"]
        active = client.post(f"/api/v1/content/{cid}/reprocess")
        assert (active.status_code, active.json()) == (
            200,
            {"job_id": first["job_id"], "content_id": cid, "status": "already_active"},
        )
        assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.pipeline_job")[0]["n"] == 1
        menos.worker()
        wait_for(lambda: status_of(client, first["job_id"]) == "completed", what="completed")
        current = client.post(f"/api/v1/content/{cid}/reprocess")
        assert (current.status_code, current.json()) == (
            200,
            {"job_id": None, "content_id": cid, "status": "already_completed"},
        )
        forced = client.post(
            f"/api/v1/content/{cid}/reprocess", params={"force": "true"}, json={"data_tier": "full"}
        )
        assert forced.status_code == 202 and forced.json()["status"] == "submitted"
        new_id = forced.json()["job_id"]
        wait_for(lambda: status_of(client, new_id) == "completed", what="rerun")
        content = client.get(f"/api/v1/content/{cid}").json()
        verbose = client.get(f"/api/v1/jobs/{new_id}?verbose=true").json()
    assert content["latest_job_id"] == new_id
    assert verbose["data_tier"] == "full" and "source_excerpt" in verbose["full_payload"]
    events = sql(
        menos.database_url,
        "SELECT count(*) AS n FROM menos.audit_event WHERE event = 'audit.reprocess_trigger'",
    )
    assert events[0]["n"] == 3


def test_pagination_is_stable_under_concurrent_inserts(menos: Menos) -> None:
    """Paging through 250 items while others are added skips and repeats nothing."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        original = {
            client.post("/api/v1/content", json={"text": f"n{i}"}).json()["content_id"]
            for i in range(250)
        }
        stop = threading.Event()

        def keep_inserting() -> None:
            with menos.client(key["api_key"]) as other:
                while not stop.is_set():
                    other.post("/api/v1/content", json={"text": "late"})

        writer = threading.Thread(target=keep_inserting)
        writer.start()
        try:
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                params: dict[str, Any] = {"limit": 17}
                if cursor:
                    params["cursor"] = cursor
                page = client.get("/api/v1/content", params=params).json()
                seen += [item["content_id"] for item in page["items"]]
                assert all("result" not in item and "body" not in item for item in page["items"])
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        finally:
            stop.set()
            writer.join()
        jobs = client.get("/api/v1/jobs", params={"limit": 100}).json()
    assert len(seen) == len(set(seen))
    assert original <= set(seen)
    assert pages >= 15
    created = [j["created_at"] for j in jobs["items"]]
    assert created == sorted(created, reverse=True) and jobs["next_cursor"]


def test_list_filters_and_their_errors(menos: Menos) -> None:
    """Lists filter by status, type and tag; an unknown status names the allowed values."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        tagged = client.post("/api/v1/content", json={"text": "x", "tags": ["keep"]}).json()
        other = client.post("/api/v1/content", json={"text": "y"}).json()
        client.post(f"/api/v1/jobs/{other['job_id']}/cancel")
        by_tag = client.get("/api/v1/content", params={"tag": "keep"}).json()["items"]
        cancelled = client.get("/api/v1/jobs", params={"status": "cancelled"}).json()["items"]
        by_content = client.get("/api/v1/jobs", params={"content_id": tagged["content_id"]})
        bad_status = client.get("/api/v1/jobs", params={"status": "done"})
        bad_limit = client.get("/api/v1/jobs", params={"limit": 101})
        bad_cursor = client.get("/api/v1/jobs", params={"cursor": "garbage"})
        bad_type = client.get("/api/v1/content", params={"content_type": "pdf"})
    assert [c["content_id"] for c in by_tag] == [tagged["content_id"]]
    assert [j["job_id"] for j in cancelled] == [other["job_id"]]
    assert [j["job_id"] for j in by_content.json()["items"]] == [tagged["job_id"]]
    assert bad_status.status_code == 400
    assert bad_status.json()["errors"][0]["field"] == "status"
    assert "pending, processing, completed, failed, cancelled" in bad_status.text
    for bad, field in ((bad_limit, "limit"), (bad_cursor, "cursor"), (bad_type, "content_type")):
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == field


def test_owners_see_only_their_own_and_admins_everything(menos: Menos) -> None:
    """Every route answers 404 for another owner's items; an admin key sees and acts on all."""
    menos.api()
    alice, bob, admin = menos.key("alice"), menos.key("bob"), menos.key("root", admin=True)
    with menos.client(alice["api_key"]) as client:
        mine = client.post("/api/v1/content", json={"text": "alice's"}).json()
    cid, jid = mine["content_id"], mine["job_id"]
    with menos.client(bob["api_key"]) as client:
        assert client.get(f"/api/v1/content/{cid}").status_code == 404
        assert client.get(f"/api/v1/jobs/{jid}").status_code == 404
        assert client.get(f"/api/v1/jobs/{jid}?verbose=true").status_code == 404
        assert client.post(f"/api/v1/jobs/{jid}/cancel").status_code == 404
        assert client.post(f"/api/v1/content/{cid}/reprocess").status_code == 404
        assert client.get("/api/v1/content").json()["items"] == []
        assert client.get("/api/v1/jobs").json()["items"] == []
        same_url = client.post("/api/v1/ingest", json={"url": "https://example.com/a"})
        assert same_url.status_code == 202
    with menos.client(admin["api_key"]) as client:
        assert client.get(f"/api/v1/content/{cid}").status_code == 200
        assert len(client.get("/api/v1/jobs").json()["items"]) == 2
        assert client.post(f"/api/v1/jobs/{jid}/cancel").status_code == 200
    revoked = menos.command("keys", "revoke", alice["key_id"])
    assert revoked.returncode == 0
    with menos.client(alice["api_key"]) as client:
        assert client.get(f"/api/v1/content/{cid}").status_code == 401
    listing = menos.command("keys", "list", "--owner", "alice")
    assert alice["key_id"] in listing.stdout and "revoked" in listing.stdout
    assert alice["api_key"] not in listing.stdout


def test_database_outage_answers_503_and_recovers(menos: Menos) -> None:
    """While the database is unreachable routes answer 503; they recover by themselves."""
    with tcp_proxy.running(menos.database_url) as (proxy, through_proxy):
        menos.api(MENOS_DATABASE_URL=through_proxy)
        key = menos.key("alice")
        with menos.client(key["api_key"]) as client:
            assert client.get("/ready").status_code == 200
            proxy.cut()
            down = client.get("/api/v1/jobs")
            assert down.status_code == 503
            assert down.headers["content-type"].startswith("application/problem+json")
            assert down.headers["retry-after"] == "1"
            # the driver's message (the database's address) stays in the server's log
            assert str(proxy.port) not in down.text and "127.0.0.1" not in down.text
            assert client.get("/ready").status_code == 503
            assert client.head("/ready").status_code == 503
            assert client.get("/health").status_code == 200
            scraped = client.get("/metrics")  # as exporters do: up 0, and what the process knows
            assert scraped.status_code == 200
            assert "menos_database_up 0.0" in scraped.text, scraped.text
            assert "menos_http_requests_total" in scraped.text
            assert "menos_jobs" not in scraped.text
            proxy.restore()
            wait_for(lambda: client.get("/api/v1/jobs").status_code == 200, what="recovery")
            assert client.get("/ready").status_code == 200
            assert "menos_database_up 1.0" in client.get("/metrics").text


def test_probes_answer_in_time_while_the_database_does_not(menos: Menos) -> None:
    """A database that stops answering (no refusal, no reset) still gives a scrape, with
    `menos_database_up 0`, well within Prometheus's default 10 s scrape timeout, and a 503
    from the readiness probe, and does not keep the API from stopping."""
    with tcp_proxy.running(menos.database_url) as (proxy, through_proxy):
        menos.api(MENOS_DATABASE_URL=through_proxy)
        assert "menos_database_up 1.0" in httpx.get(f"{menos.base_url}/metrics").text
        proxy.stall()
        scraped = httpx.get(f"{menos.base_url}/metrics", timeout=9.5)
        assert scraped.status_code == 200
        assert "menos_database_up 0.0" in scraped.text, scraped.text
        ready = httpx.get(f"{menos.base_url}/ready", timeout=9.5)  # a load balancer's probe
        assert ready.status_code == 503
        assert ready.json()["database"] == "unreachable"
        assert httpx.head(f"{menos.base_url}/ready", timeout=9.5).status_code == 503
        proxy.restore()
        wait_for(
            lambda: "menos_database_up 1.0" in httpx.get(f"{menos.base_url}/metrics").text,
            what="the scrape to see the database again",
        )
        assert httpx.get(f"{menos.base_url}/ready").status_code == 200
        # Stopped while its scrape's read and its pool wait on a silent database, the API
        # still ends well before the minute asyncpg would wait for them.
        api = menos.api(MENOS_DATABASE_URL=through_proxy)
        assert "menos_database_up 1.0" in httpx.get(f"{menos.base_url}/metrics").text
        proxy.stall()
        assert httpx.get(f"{menos.base_url}/metrics", timeout=9.5).status_code == 200
        api.terminate()
        api.wait(timeout=30)
    assert "metrics_database_unavailable" in menos.logs()


def test_api_requests_get_a_503_in_time_while_the_database_does_not_answer(
    menos: Menos,
) -> None:
    """Every /api/v1 request on a silent database (no refusal, no reset) gets its 503 with a
    retry-after within the API's deadline (10 s) and a margin, whether its connection was
    open or had to be made, not after the minute a statement may take elsewhere; and the API
    recovers when the database answers again."""
    key = menos.key("alice")
    with tcp_proxy.running(menos.database_url) as (proxy, through_proxy):
        menos.api(MENOS_DATABASE_URL=through_proxy)
        with menos.client(key["api_key"]) as client:
            submitted = client.post("/api/v1/content", json={"text": "before"}).json()
            proxy.stall()
            answers: list[httpx.Response | httpx.HTTPError] = []

            def ask(path: str) -> None:
                try:
                    answers.append(client.get(path, timeout=16))
                except httpx.HTTPError as exc:
                    answers.append(exc)

            asking = [
                threading.Thread(target=ask, args=(path,))
                for path in ["/api/v1/jobs", f"/api/v1/jobs/{submitted['job_id']}"] * 3
            ]
            for thread in asking:
                thread.start()
            answered = client.post("/api/v1/content", json={"text": "during"}, timeout=16)
            for thread in asking:
                thread.join()
            for answer in [*answers, answered]:
                assert isinstance(answer, httpx.Response), repr(answer)
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "1"
            proxy.restore()
            wait_for(lambda: client.get("/api/v1/jobs").status_code == 200, what="recovery")
            assert client.post("/api/v1/content", json={"text": "after"}).status_code == 202


def test_a_statement_waiting_past_the_deadline_is_ended_by_the_server_first(
    menos: Menos,
) -> None:
    """A cancel whose statement waits on a row lock held elsewhere is ended by the server
    (its statement_timeout, under the request's deadline) and answered 503: released right
    after, the lock lets no cancel through, as the 503 said."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job_id = client.post("/api/v1/content", json={"text": "locked"}).json()["job_id"]
        holding, release = threading.Event(), threading.Event()

        async def hold() -> None:
            conn = await db.connect(menos.database_url)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT 1 FROM menos.pipeline_job WHERE job_id = $1 FOR UPDATE",
                        uuid.UUID(job_id),
                    )
                    holding.set()
                    await asyncio.get_running_loop().run_in_executor(None, release.wait)
            finally:
                await conn.close()

        holder = threading.Thread(target=lambda: asyncio.run(hold()))
        holder.start()
        try:
            assert holding.wait(30)
            answer = client.post(f"/api/v1/jobs/{job_id}/cancel", timeout=16)
            assert answer.status_code == 503, answer.text
        finally:
            release.set()
            holder.join()
        wait_for(
            lambda: (
                not sql(
                    menos.database_url,
                    "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                    " AND datname = current_database() AND (wait_event_type = 'Lock'"
                    "      OR query LIKE '%cancel_requested_at = coalesce%')"
                    " AND state = 'active'",
                )
            ),
            what="no statement of the cancel left",
        )
        (job,) = sql(
            menos.database_url,
            "SELECT status, cancel_requested_at FROM menos.pipeline_job WHERE job_id = $1",
            uuid.UUID(job_id),
        )
        assert job == {"status": "pending", "cancel_requested_at": None}
    assert "request_database_unavailable" in menos.logs()


def test_services_stop_in_bounded_time_while_the_database_does_not_answer(
    menos: Menos,
) -> None:
    """Asked to stop while every statement waits on a silent database, a worker and a
    dispatcher end after their grace period and a margin (here 1 s + 10 s, then 5 s for the
    pool), not after the minutes their statements' timeouts and cancellations would take."""
    with tcp_proxy.running(menos.database_url) as (proxy, through_proxy):
        env = {
            "MENOS_DATABASE_URL": through_proxy,
            "MENOS_WORKER_SHUTDOWN_GRACE_S": "1",
            "MENOS_CALLBACK_TIMEOUT_S": "1",
        }
        services = [
            menos.worker(**env),
            menos.spawn(str(processes.BIN / "dispatcher"), **env),
        ]
        wait_for(
            lambda: all(f"{event}_started" in menos.logs() for event in ("worker", "dispatcher")),
            what="both services to start",
        )
        proxy.stall()  # the last writes of a stop (releases, metric totals) now wait on it
        for service in services:
            service.terminate()
        for service in services:
            service.wait(timeout=45)
    assert "stop_deadline_passed" in menos.logs()


def test_an_admins_actions_are_audited_under_the_items_owner(menos: Menos) -> None:
    """An admin cancelling or reprocessing alice's items shows in alice's audit trail, with
    the admin's key and owner as the actor."""
    menos.api()
    alice = menos.key("alice")
    admin = menos.key("ops", admin=True)
    with menos.client(alice["api_key"]) as client:
        submitted = client.post("/api/v1/content", json={"text": "audited"}).json()
    with menos.client(admin["api_key"]) as client:
        assert client.post(f"/api/v1/jobs/{submitted['job_id']}/cancel").status_code == 200
        assert (
            client.post(f"/api/v1/content/{submitted['content_id']}/reprocess").status_code == 202
        )
    rows = sql(
        menos.database_url,
        "SELECT event, owner, actor_key_id::text AS actor, detail FROM menos.audit_event"
        " WHERE event IN ('audit.cancellation', 'audit.reprocess_trigger') ORDER BY at",
    )
    assert [(r["event"], r["owner"], r["actor"]) for r in rows] == [
        ("audit.cancellation", "alice", admin["key_id"]),
        ("audit.reprocess_trigger", "alice", admin["key_id"]),
    ]
    assert {r["detail"]["actor_owner"] for r in rows} == {"ops"}

"""Ingest by URL end to end: web pages, YouTube with oEmbed, LLM answers good and bad."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import fake_llm, web_server
from tests.support.processes import Menos, sql, wait_for

TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def site() -> Iterator[web_server.Site]:
    """Pages on 127.0.0.1."""
    with web_server.running() as served:
        yield served


def finished(client: Any, job_id: str) -> dict[str, Any]:
    """The verbose job once it is terminal."""

    def check() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}?verbose=true").json()
        return job if job["status"] in TERMINAL else None

    return wait_for(check, timeout=45, what=f"job {job_id} to finish")


def ingest(client: Any, **body: Any) -> dict[str, Any]:
    answer = client.post("/api/v1/ingest", json=body)
    assert answer.status_code in (200, 202), answer.text
    out: dict[str, Any] = answer.json()
    return out


def test_web_page_is_fetched_reduced_and_deduplicated(menos: Menos, site: web_server.Site) -> None:
    """A page is fetched by the worker through redirects, titled; a re-submit is deduplicated."""
    menos.api()
    menos.worker()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        first = ingest(client, url=site.url("/hop/2") + "#section", tags=["reading"])
        assert first["content_type"] == "web" and first["resource_key"].startswith("url:")
        assert first["deduplicated"] is False
        job = finished(client, first["job_id"])
        assert job["status"] == "completed", job
        content = client.get(f"/api/v1/content/{first['content_id']}").json()
        again = client.post("/api/v1/ingest", json={"url": site.url("/hop/2")})
    assert content["title"] == "Why queues matter"
    assert content["source_url"] == site.url("/hop/2")
    assert "SKIP" in content["result"]["summary"] or content["result"]["summary"]
    assert again.status_code == 200
    assert again.json() == {**first, "status": "completed", "deduplicated": True}
    body = sql(menos.database_url, "SELECT body, source_metadata FROM menos.content")[0]
    assert "Copyright" not in body["body"] and "rescuer returns" in body["body"]
    assert body["source_metadata"]["final_url"] == site.url("/article")


def test_a_cookie_a_page_set_for_one_owner_is_not_sent_for_another(
    menos: Menos, site: web_server.Site
) -> None:
    """A session cookie one owner's page set never goes out with another owner's fetch."""
    menos.api()
    menos.worker()
    with menos.client(menos.key("alice")["api_key"]) as alice:
        assert finished(alice, ingest(alice, url=site.url("/login"))["job_id"])["status"] == (
            "completed"
        )
    with menos.client(menos.key("bob")["api_key"]) as bob:
        assert finished(bob, ingest(bob, url=site.url("/article"))["job_id"])["status"] == (
            "completed"
        )
    assert site.cookies == {"/login": None, "/article": None}


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/gone", "SOURCE_NOT_FOUND"),
        ("/big", "FETCH_FAILED"),
        ("/hop/9", "FETCH_FAILED"),
        ("/error", "FETCH_FAILED"),
    ],
)
def test_unfetchable_pages_fail_in_fetch_with_their_code(
    menos: Menos, site: web_server.Site, path: str, code: str
) -> None:
    """Missing, oversized, endlessly redirecting and erroring pages fail with their code."""
    menos.api()
    menos.worker()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job = finished(client, ingest(client, url=site.url(path))["job_id"])
    assert (job["status"], job["error_code"], job["error_stage"]) == ("failed", code, "fetch")
    assert job["error_message"]


def test_loopback_page_is_refused_when_private_addresses_are_not_allowed(
    menos: Menos, site: web_server.Site
) -> None:
    """With MENOS_CALLBACK_ALLOW_PRIVATE=false a page on 127.0.0.1 is never fetched."""
    strict = {"MENOS_CALLBACK_ALLOW_PRIVATE": "false"}
    menos.api(**strict)
    menos.worker(**strict)
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job = finished(client, ingest(client, url=site.url("/article"))["job_id"])
        refused = client.post(
            "/api/v1/ingest",
            json={"url": "https://example.com/x", "callback_url": site.url("/hook")},
        )
    assert (job["status"], job["error_code"]) == ("failed", "FETCH_FAILED")
    assert "/article" not in site.paths
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "callback_url"


def test_youtube_with_supplied_transcript_gets_title_from_oembed(
    menos: Menos, site: web_server.Site
) -> None:
    """A video with a supplied transcript is analyzed without download, titled by oEmbed."""
    env = {"MENOS_YOUTUBE_OEMBED_URL": site.url("/oembed")}
    menos.api(**env)
    menos.worker(**env)
    key = menos.key("alice")
    transcript = (
        "Welcome to this talk about job queues. Today we look at PostgreSQL, "
        "leases, heartbeats and the outbox pattern. "
    ) * 5
    with menos.client(key["api_key"]) as client:
        first = ingest(client, url="https://youtu.be/dQw4w9WgXcQ?t=3", transcript_text=transcript)
        assert (first["content_type"], first["resource_key"]) == ("youtube", "yt:dQw4w9WgXcQ")
        job = finished(client, first["job_id"])
        content = client.get(f"/api/v1/content/{first['content_id']}").json()
        same = client.post(
            "/api/v1/ingest", json={"url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ"}
        )
    assert job["status"] == "completed", job
    assert content["title"] == "A talk about queues"
    assert same.status_code == 200 and same.json()["deduplicated"] is True
    meta = sql(menos.database_url, "SELECT source_metadata FROM menos.content")[0]
    assert meta["source_metadata"]["channel"] == "Queue Channel"


def test_a_reprocess_asks_oembed_again_for_the_title_it_could_not_get(
    menos: Menos, site: web_server.Site
) -> None:
    """oEmbed failing on a video's first fetch left it untitled for good: the transcript is
    stored, so no reprocess fetched again. A reprocess asks oEmbed (only) again."""
    menos.api()
    first_worker = menos.worker(MENOS_YOUTUBE_OEMBED_URL=site.url("/broken"))
    transcript = "A talk about queues, leases and heartbeats in PostgreSQL. " * 5
    with menos.client(menos.key("alice")["api_key"]) as client:
        submitted = ingest(client, url="https://youtu.be/dQw4w9WgXcQ", transcript_text=transcript)
        assert finished(client, submitted["job_id"])["status"] == "completed"
        content_id = submitted["content_id"]
        assert client.get(f"/api/v1/content/{content_id}").json()["title"] is None
        first_worker.terminate()
        assert first_worker.wait(timeout=60) == 0
        menos.worker(MENOS_YOUTUBE_OEMBED_URL=site.url("/oembed"))
        again = client.post(f"/api/v1/content/{content_id}/reprocess?force=true")
        assert again.status_code == 202, again.text
        assert finished(client, again.json()["job_id"])["status"] == "completed"
        assert client.get(f"/api/v1/content/{content_id}").json()["title"] == "A talk about queues"
    (row,) = sql(menos.database_url, "SELECT body, source_metadata FROM menos.content")
    assert row["body"] == transcript.strip()
    assert row["source_metadata"]["channel"] == "Queue Channel"
    assert "oembed_error" not in row["source_metadata"]


def test_a_cookie_the_oembed_endpoint_set_is_not_sent_again(
    menos: Menos, site: web_server.Site
) -> None:
    """The metadata client keeps no cookie: one owner's oEmbed lookup answered with a cookie
    does not send it with the next lookup, another owner's."""
    env = {"MENOS_YOUTUBE_OEMBED_URL": site.url("/oembed")}
    menos.api(**env)
    menos.worker(**env)
    transcript = "A talk about queues, leases and heartbeats in PostgreSQL. " * 5
    for owner, video in (("alice", "dQw4w9WgXcQ"), ("bob", "9bZkp7q19f0")):
        with menos.client(menos.key(owner)["api_key"]) as client:
            submitted = ingest(client, url=f"https://youtu.be/{video}", transcript_text=transcript)
            assert finished(client, submitted["job_id"])["status"] == "completed"
    lookups = {path: cookie for path, cookie in site.cookies.items() if path.startswith("/oembed")}
    assert len(lookups) == 2 and set(lookups.values()) == {None}, lookups


def test_youtube_host_without_valid_id_is_rejected(menos: Menos) -> None:
    """A YouTube URL without a valid 11-character id is a 400 naming `url`, nothing stored."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        for url in (
            "https://www.youtube.com/watch?v=short",
            "https://youtu.be/",
            "ftp://example.com/file",
            "not a url",
        ):
            answer = client.post("/api/v1/ingest", json={"url": url})
            assert answer.status_code == 400, url
            assert answer.json()["errors"][0]["field"] == "url"
    assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.content")[0]["n"] == 0


@pytest.mark.parametrize(
    ("model", "status", "code", "stage"),
    [
        ("good", "completed", None, None),
        ("fenced", "completed", None, None),
        ("think", "completed", None, None),
        ("nojson", "failed", "EMPTY_RESPONSE", "parse"),
        ("nofields", "failed", "PARSE_FAILED", "parse"),
        ("error500", "failed", "LLM_CALL_ERROR", "analyze"),
        ("slow-3", "failed", "LLM_TIMEOUT", "analyze"),
    ],
)
def test_llm_answers_produce_documented_outcomes(
    menos: Menos,
    llm: fake_llm.FakeLLM,
    model: str,
    status: str,
    code: str | None,
    stage: str | None,
) -> None:
    """Each kind of model answer ends in the documented status, error code and stage."""
    env = {
        "MENOS_ANALYZER": "openai",
        "MENOS_LLM_BASE_URL": llm.url,
        "MENOS_LLM_MODEL": model,
        "MENOS_LLM_TIMEOUT_S": "1",
    }
    menos.api()
    menos.worker(**env)
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        answer = client.post(
            "/api/v1/content", json={"text": "# Queues\n\nA note.", "data_tier": "full"}
        )
        job = finished(client, answer.json()["job_id"])
        content = client.get(f"/api/v1/content/{answer.json()['content_id']}").json()
    assert (job["status"], job["error_code"], job["error_stage"]) == (status, code, stage)
    if status == "completed":
        result = content["result"]
        assert result["tier"] == "A" and result["quality_score"] == 82
        assert result["tags"] == ["postgresql", "job-queue", "durable-systems"]
        assert result["topics"][0]["hierarchy"] == ["Databases", "PostgreSQL"]
        assert result["topics"][0]["confidence"] == 0.9
        assert job["diagnostics"]["usage"]["total_tokens"] == 150
        assert job["full_payload"]["raw_answer"]
        assert "prompt" in job["full_payload"]
    else:
        assert content["result"] is None
    if model == "nojson":
        assert len(llm.requests) == 2  # exactly one repair call

"""A newcomer's path and the queue's guarantees, with real processes and real HTTP."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import termios
import time
import uuid
from typing import Any

import httpx
import pytest

from menos.http import serving
from tests.support import fake_llm, processes
from tests.support.processes import Menos, sql, wait_for


def job_status(client: Any, job_id: str) -> str:
    return str(client.get(f"/api/v1/jobs/{job_id}").json()["status"])


def test_note_submitted_over_http_completes_with_a_result(menos: Menos) -> None:
    """A markdown note posted to the API is processed by a worker into a valid result."""
    menos.api()
    menos.worker()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        text = (
            "---\ntitle: Queues\ntags: [databases]\n---\n# Durable queues\n\n"
            "PostgreSQL can be a reliable job queue. Workers claim jobs with SKIP LOCKED, "
            "heartbeat their leases and write results in one transaction.\n"
        )
        answer = client.post("/api/v1/content", json={"text": text, "tags": ["notes"]})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] == "pending" and body["deduplicated"] is False
        assert body["resource_key"] == f"cid:{body['content_id']}"
        wait_for(
            lambda: job_status(client, body["job_id"]) == "completed", what="the job to complete"
        )
        content = client.get(f"/api/v1/content/{body['content_id']}").json()
    assert content["title"] == "Queues"
    assert content["tags"] == ["notes", "databases"]
    assert content["processing_status"] == "completed"
    assert content["latest_job_id"] == body["job_id"]
    result = content["result"]
    assert result["summary"] and result["model"] == "builtin"
    assert result["tier"] in {"S", "A", "B", "C", "D"}
    assert 1 <= result["quality_score"] <= 100
    assert all(tag == tag.lower() for tag in result["tags"])


def test_multipart_upload_takes_title_from_file_name(menos: Menos) -> None:
    """A file upload without title or frontmatter is titled by its file name."""
    menos.api()
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        answer = client.post(
            "/api/v1/content",
            files={"file": ("reading-list.md", b"Some text without a heading.", "text/markdown")},
            data={"tags": ["a,b", "c"]},
        )
        assert answer.status_code == 202, answer.text
        content = client.get(f"/api/v1/content/{answer.json()['content_id']}").json()
    assert content["title"] == "reading-list"
    assert content["tags"] == ["a", "b", "c"]


def test_sigkilled_worker_job_is_finished_by_another(menos: Menos, llm: fake_llm.FakeLLM) -> None:
    """Killing a worker mid-job loses nothing: another worker completes it, one result persisted."""
    slow = {
        "MENOS_ANALYZER": "openai",
        "MENOS_LLM_BASE_URL": llm.url,
        "MENOS_LLM_MODEL": "slow-3",
        "MENOS_JOB_LEASE_S": "1.5",
    }
    menos.api()
    first = menos.worker("--worker-id", "doomed", **slow)
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job_id = client.post("/api/v1/content", json={"text": "kill me softly"}).json()["job_id"]
        wait_for(
            lambda: sql(
                menos.database_url,
                "SELECT 1 FROM menos.pipeline_job WHERE worker_id = 'doomed' "
                "AND current_stage = 'analyze'",
            ),
            what="the first worker to be analyzing",
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
        menos.worker("--worker-id", "rescuer", **{**slow, "MENOS_LLM_MODEL": "good"})
        wait_for(
            lambda: job_status(client, job_id) == "completed",
            timeout=60,
            what="the job to complete on the second worker",
        )
        job = client.get(f"/api/v1/jobs/{job_id}", params={"verbose": "true"}).json()
    assert job["worker_id"] == "rescuer" and job["attempts"] == 2
    rows = sql(menos.database_url, "SELECT result FROM menos.content WHERE result IS NOT NULL")
    assert len(rows) == 1
    jobs = sql(menos.database_url, "SELECT status FROM menos.pipeline_job")
    assert [j["status"] for j in jobs] == ["completed"]


def test_global_cap_holds_across_three_workers(menos: Menos, llm: fake_llm.FakeLLM) -> None:
    """With MENOS_MAX_CONCURRENCY=2, three workers never have more than 2 jobs processing."""
    env = {
        "MENOS_ANALYZER": "openai",
        "MENOS_LLM_BASE_URL": llm.url,
        "MENOS_LLM_MODEL": "slow-0.4",
        "MENOS_MAX_CONCURRENCY": "2",
    }
    menos.api()
    for index in range(3):
        menos.worker("--concurrency", "2", "--worker-id", f"w{index}", **env)
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        for index in range(10):
            assert client.post("/api/v1/content", json={"text": f"note {index}"}).status_code == 202
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = sql(
            menos.database_url,
            "SELECT count(*) FILTER (WHERE status = 'processing') AS processing, "
            "count(*) FILTER (WHERE status = 'completed') AS completed "
            "FROM menos.pipeline_job",
        )[0]
        seen.append(counts["processing"])
        if counts["completed"] == 10:
            break
        time.sleep(0.02)  # the sampling interval of this poll: a faster one would only load SQL
    assert max(seen) == 2, seen
    assert counts["completed"] == 10


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_lets_the_running_job_complete(
    menos: Menos, llm: fake_llm.FakeLLM, sig: signal.Signals
) -> None:
    """SIGTERM stops claiming but the job in progress completes before the worker exits; so
    does SIGHUP (the terminal running `bin/worker` closed), which used to kill it at once."""
    env = {"MENOS_ANALYZER": "openai", "MENOS_LLM_BASE_URL": llm.url, "MENOS_LLM_MODEL": "slow-1.5"}
    menos.api()
    worker = menos.worker("--worker-id", "polite", **env)
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job_id = client.post("/api/v1/content", json={"text": "finish me"}).json()["job_id"]
        wait_for(lambda: job_status(client, job_id) == "processing", what="processing")
        worker.send_signal(sig)
        assert worker.wait(timeout=30) == 0
        assert job_status(client, job_id) == "completed"


def test_services_started_under_nohup_outlive_their_terminal(menos: Menos) -> None:
    """`nohup bin/worker &`: the shell still sends SIGHUP to its jobs when its terminal
    closes, and a service started so keeps running; SIGTERM stops it as before."""
    api_port = str(processes.free_port())
    services = [
        menos.spawn("nohup", str(processes.BIN / "api"), MENOS_PORT=api_port),
        menos.spawn("nohup", str(processes.BIN / "worker")),
        menos.spawn("nohup", str(processes.BIN / "dispatcher")),
    ]

    def started() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=1).raise_for_status()
        except httpx.HTTPError:
            return False
        return all(f'"{name}_started"' in menos.logs() for name in ("worker", "dispatcher"))

    wait_for(started, timeout=60, what="the services to start")
    assert f'"url":"http://127.0.0.1:{api_port}"' in menos.logs()  # where bin/api listens
    for proc in services:
        proc.send_signal(signal.SIGHUP)
    time.sleep(2)
    assert [proc.poll() for proc in services] == [None, None, None], menos.logs()
    for proc in services:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_stopped_api_cuts_off_answers_its_client_does_not_read(menos: Menos) -> None:
    """SIGTERM while a client reads none of the answers to its pipelined requests: at the
    grace's end uvicorn logged the answer being sent with a traceback, and the process exited
    seconds late. The connection is now cut off with one line, and bin/api exits 0."""
    api = menos.api()
    schema = httpx.get(f"{menos.base_url}/schema/openapi.json").content
    request = b"GET /schema/openapi.json HTTP/1.1\r\nHost: menos\r\n\r\n"
    # Far more than the socket buffers and the server's own hold.
    count = 16 * 2**20 // len(schema) + 1
    port = int(menos.base_url.rsplit(":", 1)[1])
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(request * count)
        queued: list[int] = []

        def answers_stalled() -> bool:  # the server is blocked sending what nobody reads
            unread = fcntl.ioctl(client.fileno(), termios.FIONREAD, b"\0" * 4)
            queued.append(struct.unpack("i", unread)[0])
            return len(queued) > 1 and queued[-1] == queued[-2] > 0

        wait_for(answers_stalled, every=0.5, what="the answers to fill the buffers")
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=serving.SHUTDOWN_GRACE_S + 10) == 0
    logs = "".join(path.read_text() for path in menos.workdir.glob("api-*.log"))
    assert "Traceback" not in logs and "Exception in ASGI application" not in logs, logs
    assert logs.count('"request_cut_off"') == 1, logs


def test_sighup_of_a_closed_terminal_lets_the_running_job_complete(
    menos: Menos, llm: fake_llm.FakeLLM
) -> None:
    """`bin/worker` in a terminal that is closed: SIGHUP comes, and its logs can no longer be
    written there (EIO). The stop is graceful all the same: the job completes, exit 0."""
    env = {"MENOS_ANALYZER": "openai", "MENOS_LLM_BASE_URL": llm.url, "MENOS_LLM_MODEL": "slow-1.5"}
    menos.api()
    terminal, tty = pty.openpty()
    worker = subprocess.Popen(
        [str(processes.BIN / "worker")],
        env={**menos.env, **env, "MENOS_LOG_FORMAT": "console"},
        stdin=subprocess.DEVNULL,
        stdout=tty,
        stderr=tty,
        cwd=menos.workdir,
    )
    os.close(tty)
    key = menos.key("alice")
    try:
        with menos.client(key["api_key"]) as client:
            job_id = client.post("/api/v1/content", json={"text": "finish me"}).json()["job_id"]
            wait_for(lambda: job_status(client, job_id) == "processing", what="processing")
            os.close(terminal)  # the terminal is gone: writes to it fail with EIO
            worker.send_signal(signal.SIGHUP)
            assert worker.wait(timeout=30) == 0
            assert job_status(client, job_id) == "completed"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.parametrize("hurried", [False, True], ids=["grace-ends", "second-sigterm"])
def test_sigterm_past_the_grace_gives_the_job_back(
    menos: Menos, llm: fake_llm.FakeLLM, hurried: bool
) -> None:
    """A job still running when the grace period ends goes back to pending, attempt
    uncounted; a second SIGTERM ends the grace (here ten minutes) at once."""
    env = {
        "MENOS_ANALYZER": "openai",
        "MENOS_LLM_BASE_URL": llm.url,
        "MENOS_LLM_MODEL": "slow-600" if hurried else "slow-5",
        "MENOS_WORKER_SHUTDOWN_GRACE_S": "600" if hurried else "0.5",
    }
    menos.api()
    worker = menos.worker(**env)
    key = menos.key("alice")
    with menos.client(key["api_key"]) as client:
        job_id = client.post("/api/v1/content", json={"text": "too slow"}).json()["job_id"]
        wait_for(lambda: job_status(client, job_id) == "processing", what="processing")
        worker.send_signal(signal.SIGTERM)
        if hurried:
            wait_for(lambda: "worker_stopping" in menos.logs(), what="the graceful stop")
            worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0  # far below a grace of ten minutes
    assert ("stop_hurried" in menos.logs()) == hurried
    row = sql(menos.database_url, "SELECT status, attempts, worker_id FROM menos.pipeline_job")[0]
    assert row == {"status": "pending", "attempts": 0, "worker_id": None}


def test_bad_input_gets_documented_errors_and_stores_nothing(menos: Menos) -> None:
    """Each kind of bad request answers its 4xx problem and leaves no row behind."""
    menos.api()
    alice = menos.key("alice")
    bob = menos.key("bob")
    with menos.client(alice["api_key"]) as client:

        def post(**kw: Any) -> Any:
            return client.post("/api/v1/content", **kw)

        not_json = post(content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        assert not_json.headers["content-type"].startswith("application/problem+json")
        missing = post(json={"title": "no text"})
        assert missing.status_code == 400
        assert missing.json()["errors"][0]["field"] == "text"
        wrong_type = post(json={"text": 5})
        assert wrong_type.status_code == 400 and wrong_type.json()["errors"][0]["field"] == "text"
        blank = post(json={"text": "   "})
        assert blank.status_code == 400
        too_big = post(
            content=b'{"text": "' + b"a" * (6 * 1024 * 1024) + b'"}',
            headers={"content-type": "application/json"},
        )
        assert too_big.status_code == 413
        assert too_big.json()["detail"] == "the request body is over 5242880 bytes"
        big_file = post(files={"file": ("n.md", b"a" * (6 * 1024 * 1024), "text/markdown")})
        assert big_file.status_code == 413, big_file.text
        assert big_file.json()["detail"] == "the request body is over 5242880 bytes"
        latin1 = post(files={"file": ("n.md", "café".encode("latin-1"), "text/markdown")})
        assert latin1.status_code == 415
        assert latin1.json()["detail"] == "file: the file is not UTF-8 text"
        assert latin1.json()["errors"] == [
            {"field": "file", "message": "the file is not UTF-8 text"}
        ]
        form = post(content=b"text=hi", headers={"content-type": "text/plain"})
        assert form.status_code == 415
        bad_tier = post(json={"text": "x", "data_tier": "huge"})
        assert bad_tier.status_code == 400 and bad_tier.json()["errors"][0]["field"] == "data_tier"
        nul = post(json={"text": "a\u0000b"})
        assert nul.status_code == 400
        # A misspelled field is refused, naming it: ignored, it would lose its callbacks in
        # silence. So is a callback_url sent blank.
        for path, body in (
            ("/api/v1/content", {"text": "x", "callbak_url": "https://example.com/"}),
            ("/api/v1/ingest", {"url": "https://example.com/", "callbak_url": "x"}),
            (f"/api/v1/content/{uuid.uuid4()}/reprocess", {"callbak_url": "x"}),
        ):
            misspelled = client.post(path, json=body)
            assert misspelled.status_code == 400, (path, misspelled.text)
            assert misspelled.json()["errors"] == [
                {"field": "callbak_url", "message": "unknown field"}
            ], (path, misspelled.text)
            known = {k: v for k, v in body.items() if k != "callbak_url"}
            blank = client.post(path, json={**known, "callback_url": " "})
            assert blank.status_code == 400, (path, blank.text)
            assert blank.json()["errors"][0]["field"] == "callback_url", (path, blank.text)
        in_form = post(files={"file": ("a.md", b"# a")}, data={"tag": "x"})
        assert in_form.status_code == 400, in_form.text
        assert in_form.json()["errors"] == [{"field": "tag", "message": "unknown field"}]
        # A field a form or a query gives once, given twice, is refused: never one of them
        # picked in silence.
        for twice, field in (
            (post(files=[("file", ("a.md", b"# a", "text/markdown"))] * 2), "file"),
            (post(files={"file": ("a.md", b"# a")}, data={"title": ["x", "y"]}), "title"),
            (post(files={"file": ("a.md", b"# a")}, data={"data_tier": ["full"] * 2}), "data_tier"),
            (client.get("/api/v1/jobs?status=failed&status=completed"), "status"),
            (client.get("/api/v1/content?limit=5&limit=6"), "limit"),
            (client.get("/api/v1/jobs/x?verbose=true&verbose=false"), "verbose"),
        ):
            assert twice.status_code == 400, twice.text
            assert twice.json()["errors"] == [{"field": field, "message": "given more than once"}]
        # a query parameter the route does not know is refused: never a filter ignored
        for unknown_query, field in (
            (client.get("/api/v1/jobs?stauts=failed"), "stauts"),
            (client.get("/api/v1/content?owner=bob"), "owner"),
            (client.get("/api/v1/jobs/x?verbos=true"), "verbos"),
            (post(files={"file": ("a.md", b"# a")}, params={"force": "true"}), "force"),
        ):
            assert unknown_query.status_code == 400, unknown_query.text
            assert unknown_query.json()["errors"] == [
                {"field": field, "message": "unknown query parameter"}
            ]
        # a name or value not UTF-8 once percent-decoded is named: Litestar read it as
        # replacement characters, and `?tag=%ff` listed nothing without saying why
        for not_utf8, field in (
            (client.get("/api/v1/content?tag=%ff%fe"), "tag"),
            (client.get("/api/v1/jobs?status=caf%e9"), "status"),
            (client.get("/api/v1/jobs?st%e9tus=x"), "st\ufffdtus"),
        ):
            assert not_utf8.status_code == 400, not_utf8.text
            assert not_utf8.json()["errors"] == [{"field": field, "message": "not valid UTF-8"}]
        assert client.get("/api/v1/jobs?status=failed&limit=5").status_code == 200
        # the probes, /metrics and /schema ignore their query strings, repeated or not
        for path in ("/health", "/ready", "/metrics", "/schema/openapi.json"):
            assert client.get(f"{path}?a=1&a=2").status_code == 200, path
        unknown = client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000")
        assert unknown.status_code == 404
        # an unknown route is a problem document too, under /schema as anywhere else
        for path in ("/nothing", "/api/v1/nothing", "/schema/nothing", "/schema/redoc"):
            missing = client.get(path)
            assert missing.status_code == 404, path
            assert missing.headers["content-type"] == "application/problem+json", path
            assert missing.json()["status"] == 404, path
        # an id that cannot be one (a placeholder left in) is named, after authentication
        for method, path, field in (
            ("GET", "/api/v1/jobs/<job_id>", "job_id"),
            ("POST", "/api/v1/jobs/not-a-uuid/cancel", "job_id"),
            ("GET", "/api/v1/content/01a21bef-da0d", "content_id"),
            ("POST", "/api/v1/content/xyz/reprocess", "content_id"),
        ):
            not_uuid = client.request(method, path)
            assert not_uuid.status_code == 400, (path, not_uuid.text)
            assert [e["field"] for e in not_uuid.json()["errors"]] == [field], not_uuid.text
            anonymous = processes.httpx.request(method, f"{menos.base_url}{path}")
            assert anonymous.status_code == 401, (path, anonymous.text)
    assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.content")[0]["n"] == 0
    with menos.client(bob["api_key"]) as bob_client:
        job_id = bob_client.post("/api/v1/content", json={"text": "bob's"}).json()["job_id"]
    with menos.client(alice["api_key"]) as client:
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
    with menos.client("menos_not-a-real-key-at-all") as stranger:
        assert stranger.get(f"/api/v1/jobs/{job_id}").status_code == 401
        assert stranger.get("/api/v1/jobs?status=a&status=b").status_code == 401
        # authentication comes first: whatever the body, it is never read for a stranger
        for path in ("/api/v1/ingest", "/api/v1/content", f"/api/v1/content/{job_id}/reprocess"):
            for body, media in ((b"{", "application/json"), (b"x", "text/plain")):
                answer = stranger.post(path, content=body, headers={"content-type": media})
                assert answer.status_code == 401, (path, media, answer.text)
    # A key that was sent is called unknown, whatever its form; asking for one is for a
    # request that sent none.
    for header, detail in (
        (None, "send Authorization: Bearer <api key>"),
        ("Basic dXNlcjpwdw==", "send Authorization: Bearer <api key>"),
        ("Bearer", "send Authorization: Bearer <api key>"),
        ("Bearer nope", "unknown or revoked API key"),
        ("Bearer " + "k" * 300, "unknown or revoked API key"),
        ("Bearer menos_not-a-real-key-at-all", "unknown or revoked API key"),
    ):
        headers = {"authorization": header} if header else {}
        refused = processes.httpx.get(f"{menos.base_url}/api/v1/jobs/{job_id}", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["detail"] == detail, (header, refused.text)


def test_hostile_bodies_and_cursors_get_4xx_and_store_nothing(menos: Menos) -> None:
    """Inputs that once reached the database or the decoder's recursion limit as a 500."""
    menos.api()
    alice = menos.key("alice")
    deep = b'{"%s": "ok", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    json_type = {"content-type": "application/json"}
    cursor = base64.urlsafe_b64encode(
        json.dumps(["0001-01-01T00:00:00+01:00", str(uuid.uuid4())]).encode()
    ).decode()
    with menos.client(alice["api_key"]) as client:
        for path, field in (
            ("/api/v1/ingest", "url"),
            ("/api/v1/content", "text"),
            (f"/api/v1/content/{uuid.uuid4()}/reprocess", "transcript_text"),
        ):
            nested = client.post(path, content=deep % field.encode(), headers=json_type)
            assert nested.status_code == 400, (path, nested.text)
            # refused for its depth, or for the field it is in, before the decoder reaches
            # the bottom of it
            assert nested.json()["errors"] in (
                [{"field": "body", "message": "the JSON body is nested too deeply"}],
                [{"field": "x", "message": "unknown field"}],
            ), (path, nested.text)
            # invalid UTF-8 inside a string the route reads
            broken = client.post(
                path, content=b'{"%s": "ok \xc3"}' % field.encode(), headers=json_type
            )
            assert broken.status_code == 400, (path, broken.text)
            assert broken.json()["errors"] == [
                {"field": "body", "message": "the JSON body is not valid UTF-8"}
            ]
            # every route names what is wrong with a JSON body it cannot read, the same way
            for body, problem in (
                (
                    b'{"%s": "half a pair \\ud800"}',
                    "a string holds an unpaired UTF-16 surrogate escape",
                ),
                (b'{"%s": "cut', "Input data was truncated"),
            ):
                unread = client.post(path, content=body % field.encode(), headers=json_type)
                assert unread.status_code == 400, (path, unread.text)
                assert unread.json()["errors"] == [
                    {"field": "body", "message": f"not valid JSON: {problem}"}
                ], (path, unread.text)
        form = client.post(
            "/api/v1/ingest",
            content=b"url=https%3A%2F%2Fexample.com%2F",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 415
        plain = client.post(
            f"/api/v1/content/{uuid.uuid4()}/reprocess",
            content=b"{}",
            headers={"content-type": "text/plain"},
        )
        assert plain.status_code == 415
        raw_form = (
            b'--b\r\nContent-Disposition: form-data; name="title"\r\n\r\n\xff\xfe\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="n.md"\r\n'
            b"Content-Type: text/markdown\r\n\r\n# note\r\n--b--\r\n"
        )
        not_utf8 = client.post(
            "/api/v1/content",
            content=raw_form,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert not_utf8.status_code == 415, not_utf8.text
        nul_name = client.post(
            "/api/v1/content",
            content=raw_form.replace(b"\xff\xfe", b"t").replace(b'"n.md"', b'"a\x00b.md"'),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert nul_name.status_code == 400, nul_name.text
        assert nul_name.json()["errors"][0]["field"] == "file"
        for listing in ("/api/v1/jobs", "/api/v1/content"):
            forged = client.get(listing, params={"cursor": cursor})
            assert forged.status_code == 400, (listing, forged.text)
            assert forged.json()["errors"][0]["field"] == "cursor"
    assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.content")[0]["n"] == 0
    with menos.client(alice["api_key"]) as client:
        for escape in ("\\0", "\\ud800"):  # YAML escapes for a NUL and a lone surrogate
            text = f'---\ntitle: "a{escape}b"\n---\n# Heading\n'
            stored = client.post("/api/v1/content", json={"text": text})
            assert stored.status_code == 202, stored.text
            content = client.get(f"/api/v1/content/{stored.json()['content_id']}").json()
            assert content["title"] == "Heading"  # the frontmatter was kept as text


def test_errors_name_the_field_the_client_sent(menos: Menos) -> None:
    """A bad query flag of a route whose body is optional names only the flag; frontmatter
    tags over the limits name the note, not a `tags` field the request never sent; a form of
    too many parts is a 400 saying so."""
    menos.api()
    alice = menos.key("alice")
    with menos.client(alice["api_key"]) as client:
        content_id = client.post("/api/v1/content", json={"text": "# note"}).json()["content_id"]
        for flag in ("maybe", ""):
            answer = client.post(f"/api/v1/content/{content_id}/reprocess?force={flag}")
            assert answer.status_code == 400, answer.text
            assert [e["field"] for e in answer.json()["errors"]] == ["force"]
            assert answer.json()["detail"].startswith("force: "), answer.text  # not the route
        many = ", ".join(f"t{n}" for n in range(60))
        fm_many = client.post("/api/v1/content", json={"text": f"---\ntags: [{many}]\n---\nb"})
        assert fm_many.status_code == 400
        assert fm_many.json()["errors"] == [
            {"field": "text", "message": "frontmatter tags: at most 50 tags"}
        ]
        fm_long = client.post(
            "/api/v1/content",
            files={
                "file": (
                    "n.md",
                    f"---\ntags: [true, ok, '  ', {'x' * 150}]\n---\nb".encode(),
                    "text/markdown",
                )
            },
        )
        assert fm_long.status_code == 400
        assert fm_long.json()["errors"] == [
            {"field": "file", "message": f"frontmatter tag {'x' * 20!r}… is over 100 characters"}
        ]
        fifty = ", ".join(f"t{n}" for n in range(50))
        both = client.post(
            "/api/v1/content", json={"text": f"---\ntags: [{fifty}]\n---\nb", "tags": ["a"]}
        )
        assert both.status_code == 400
        assert both.json()["errors"] == [
            {"field": "tags", "message": "at most 50 tags, the frontmatter's included"}
        ]
        parts = b"".join(
            b'--b\r\nContent-Disposition: form-data; name="tags"\r\n\r\nt\r\n' for _ in range(1001)
        )
        form = client.post(
            "/api/v1/content",
            content=parts
            + b'--b\r\nContent-Disposition: form-data; name="file"; filename="n.md"\r\n'
            b"Content-Type: text/markdown\r\n\r\n# note\r\n--b--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert form.status_code == 400, form.text
        assert form.json()["errors"] == [
            {
                "field": "body",
                "message": "the form cannot be read: "
                "maximum segment count exceeded (at most 1000 parts)",
            }
        ]
        long_name = client.post(
            "/api/v1/content",
            files={"file": ("n" * 5000 + ".md", b"# note", "text/markdown")},
        )
        assert long_name.status_code == 400, long_name.text
        assert long_name.json()["errors"] == [
            {
                "field": "body",
                "message": "the form cannot be read: maximum segment header length exceeded",
            }
        ]
    assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.content")[0]["n"] == 1


def test_swagger_ui_needs_nothing_but_the_api(menos: Menos) -> None:
    """The API docs page loads its scripts and styles from bin/api itself: on a machine
    without internet it used to be blank (they came from a CDN)."""
    menos.api()
    pages = [httpx.get(f"{menos.base_url}{path}") for path in ("/schema", "/schema/swagger")]
    assert [p.status_code for p in pages] == [200, 200] and pages[0].text == pages[1].text
    assert "SwaggerUIBundle" in pages[0].text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", pages[0].text)
    assert len(assets) == 4 and all(a.startswith("/schema/swagger-assets/") for a in assets)
    kinds = {"js": "javascript", "css": "css", "png": "image/png"}
    for asset in assets:
        served = httpx.get(f"{menos.base_url}{asset}")
        assert served.status_code == 200, asset
        assert kinds[asset.rsplit(".", 1)[1]] in served.headers["content-type"], asset
    for outside in ("nothing.js", "", "..%2F..%2Fcore.py", "../__init__.py"):
        missing = httpx.get(f"{menos.base_url}/schema/swagger-assets/{outside}")
        assert missing.status_code == 404, outside
        assert missing.headers["content-type"] == "application/problem+json", outside


def test_head_is_answered_wherever_get_is(menos: Menos) -> None:
    """HEAD on an API route or /metrics answered 405 (RFC 9110: a server that serves GET
    serves HEAD): it now answers the GET's status and headers, without a body."""
    menos.api()
    key = menos.key("alice")["api_key"]
    with menos.client(key) as client:
        job = client.post("/api/v1/content", json={"text": "# Head\n\nA note."}).json()["job_id"]
        paths = ["/api/v1/jobs", f"/api/v1/jobs/{job}", "/api/v1/content", "/health", "/ready"]
        for path in [*paths, "/metrics", "/schema/openapi.json", "/schema/swagger"]:
            got, headed = client.get(path), client.head(path)
            assert (headed.status_code, headed.content) == (got.status_code, b""), path
            assert headed.headers["content-type"] == got.headers["content-type"], path
            if path != "/metrics":  # the counts grow between the two requests
                assert headed.headers["content-length"] == got.headers["content-length"], path
        for path, status in (("/api/v1/nothing", 404), ("/api/v1/ingest", 405)):
            assert client.head(path).status_code == status, path
        assert httpx.head(f"{menos.base_url}/api/v1/jobs").status_code == 401
        counted = client.get("/metrics").text
    assert 'menos_http_requests_total{method="HEAD",route="/api/v1/jobs",status="200"} 1.0' in (
        counted
    )

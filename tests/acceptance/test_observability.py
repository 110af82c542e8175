"""What an operator watches: /metrics, JSON logs with job context, audit events, versions."""

from __future__ import annotations

import json
import signal
import socket
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import BIN, Menos, sql, wait_for


def scrape(menos: Menos) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    answer = httpx.get(f"{menos.base_url}/metrics", timeout=10)
    # each parameter once: Prometheus 3 refuses a Content-Type that repeats one
    assert answer.headers.get_list("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
    text = answer.text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_report_queue_stages_and_http(menos: Menos) -> None:
    """/metrics parses as Prometheus text with job counts, depth, stage histogram and HTTP."""
    menos.api()
    key = menos.key("alice")["api_key"]
    with menos.client(key) as client:
        waiting = client.post("/api/v1/content", json={"text": "waits"}).json()
        before = scrape(menos)
        assert before["menos_jobs"][(("status", "pending"),)] == 1
        assert before["menos_queue_depth"][()] == 1
        assert before["menos_oldest_pending_age_seconds"][()] >= 0
        menos.worker("--worker-id", "metrics-worker")
        wait_for(
            lambda: client.get(f"/api/v1/jobs/{waiting['job_id']}").json()["status"] == "completed",
            what="completion",
        )
    after = wait_for(
        lambda: (s := scrape(menos)).get("menos_stage_duration_seconds_count") and s,
        what="stage metrics flushed",
    )
    assert after["menos_jobs"][(("status", "completed"),)] == 1
    assert after["menos_queue_depth"][()] == 0
    stages = {dict(labels)["stage"] for labels in after["menos_stage_duration_seconds_count"]}
    assert stages == {"fetch", "prepare", "analyze", "parse", "persist"}
    inf = after["menos_stage_duration_seconds_bucket"][(("le", "+Inf"), ("stage", "analyze"))]
    assert inf == 1
    requests = after["menos_http_requests_total"]
    assert requests[(("method", "POST"), ("route", "/api/v1/content"), ("status", "202"))] == 1
    assert "menos_http_request_duration_seconds_bucket" in after
    # every series is one docs/operations.md lists: no client library extras
    assert not [name for name in after if name.endswith("_created")]


def test_job_logs_are_json_with_context_and_one_summary(menos: Menos) -> None:
    """Worker logs are JSON lines; job lines carry job, content and worker ids; one summary."""
    menos.api()
    key = menos.key("alice")["api_key"]
    worker = menos.worker("--worker-id", "logger")
    with menos.client(key) as client:
        job = client.post("/api/v1/content", json={"text": "log me"}).json()
        wait_for(
            lambda: client.get(f"/api/v1/jobs/{job['job_id']}").json()["status"] == "completed",
            what="completion",
        )
    worker.terminate()
    worker.wait()
    log_file = next(p for p in menos.workdir.glob("worker-*.log"))
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("job_id") == job["job_id"]]
    assert all(
        line["content_id"] == job["content_id"] and line["worker_id"] == "logger" for line in mine
    )
    stage_lines = [line for line in mine if line["event"] == "stage_finished"]
    assert [line["stage"] for line in stage_lines] == [
        "fetch",
        "prepare",
        "analyze",
        "parse",
        "persist",
    ]
    assert all(isinstance(line["duration_ms"], float) for line in stage_lines)
    assert [line["outcome"] for line in mine if line["event"] == "job_finished"] == ["completed"]


def test_audit_log_lines_carry_ids_as_plain_strings(menos: Menos) -> None:
    """An audit line in the API's JSON log names the job as the API does, not as a repr."""
    menos.api()
    key = menos.key("alice")["api_key"]
    with menos.client(key) as client:
        first = client.post("/api/v1/content", json={"text": "twice"}).json()
        again = client.post(
            f"/api/v1/content/{first['content_id']}/reprocess", params={"force": "true"}
        ).json()
    log_file = next(p for p in menos.workdir.glob("api-*.log"))
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    (trigger,) = [line for line in lines if line["event"] == "audit.reprocess_trigger"]
    assert trigger["job_id"] == again["job_id"]


def raw_head(base_url: str, path: str) -> tuple[str, str, bytes]:
    """The status line and headers of a HEAD request and every byte after them, read off the
    socket until the server closes it (an HTTP client would not read a body after HEAD)."""
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    status, _, headers = head.decode().partition("\r\n")
    return status, headers.lower(), rest


def test_health_reports_the_package_version(menos: Menos) -> None:
    """/health reports the version in pyproject.toml, and jobs are stamped with it."""
    import tomllib

    from tests.support.processes import ROOT

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    api = menos.api()
    assert httpx.get(f"{menos.base_url}/health").json() == {"status": "ok", "app_version": version}
    for probe in ("/health", "/ready"):  # as load balancers check
        status, headers, rest = raw_head(menos.base_url, probe)
        assert (status, rest) == ("HTTP/1.1 200 OK", b""), rest  # nothing after the headers
        length = len(httpx.get(f"{menos.base_url}{probe}").content)
        assert f"content-length: {length}\r\n" in headers + "\r\n", headers  # the GET's
    key = menos.key("alice")["api_key"]
    with menos.client(key) as client:
        client.post("/api/v1/content", json={"text": "versioned"})
    rows = sql(menos.database_url, "SELECT pipeline_version FROM menos.pipeline_job")
    assert [r["pipeline_version"] for r in rows] == [version]
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a requested stop: exit 0
        api.send_signal(stop)
        assert api.wait(timeout=30) == 0
        api = menos.api()


def test_verbose_reads_are_audited(menos: Menos) -> None:
    """Each verbose job read stores an audit.full_tier_access event naming the reader."""
    menos.api()
    created = menos.key("alice")
    with menos.client(created["api_key"]) as client:
        job = client.post("/api/v1/content", json={"text": "x", "data_tier": "full"}).json()
        client.get(f"/api/v1/jobs/{job['job_id']}", params={"verbose": "true"})
        client.get(f"/api/v1/jobs/{job['job_id']}")
    rows = sql(
        menos.database_url,
        "SELECT event, actor_key_id::text, subject::text "
        "FROM menos.audit_event WHERE event = 'audit.full_tier_access'",
    )
    assert rows == [
        {
            "event": "audit.full_tier_access",
            "actor_key_id": created["key_id"],
            "subject": job["job_id"],
        }
    ]


def test_stopped_and_gone_processes_fold_into_one_metric_total(menos: Menos) -> None:
    """A worker that stops folds its samples into the retired total, and the purge folds
    those of a process gone quiet: the totals stay, the per-process rows go."""
    menos.api()
    key = menos.key("alice")["api_key"]

    def finish(text: str) -> None:
        with menos.client(key) as client:
            job = client.post("/api/v1/content", json={"text": text}).json()
            wait_for(
                lambda: client.get(f"/api/v1/jobs/{job['job_id']}").json()["status"] == "completed",
                what="completion",
            )

    def fetch_runs() -> float:
        return scrape(menos)["menos_stage_duration_seconds_count"][(("stage", "fetch"),)]

    def processes() -> set[str]:
        rows = sql(menos.database_url, "SELECT DISTINCT process_id FROM menos.metric_sample")
        return {r["process_id"].rsplit("#", 1)[0] for r in rows}  # without the run's suffix

    first = menos.worker("--worker-id", "first")
    finish("one")
    wait_for(lambda: "first" in processes(), what="first worker's samples")
    first.terminate()
    assert first.wait(timeout=30) == 0
    assert processes() == {"(retired)"}
    assert fetch_runs() == 1
    killed = (
        "INSERT INTO menos.metric_sample (process_id, name, labels, value, updated_at) "
        "VALUES ($1, 'menos_stage_duration_seconds_count', 'stage=fetch', 5, "
        "now() - interval '2 days')"
    )
    sql(menos.database_url, killed, "killed")  # a process killed long ago left its rows
    second = menos.worker("--worker-id", "second")  # a worker purges when it starts
    wait_for(lambda: "killed" not in processes(), what="the purge at the worker's start")
    finish("two")
    wait_for(lambda: fetch_runs() == 7, what="second worker's samples")
    sql(menos.database_url, killed, "killed too")
    preview = json.loads(menos.command("purge", "--dry-run").stdout)
    assert preview["metric_processes"] == 1
    assert json.loads(menos.command("purge").stdout)["metric_processes"] == 1
    assert processes() == {"(retired)", "second"}
    assert fetch_runs() == 12
    # killed, and started again under the same id: its counts from zero must not overwrite
    # the killed run's rows
    second.terminate()
    assert second.wait(timeout=30) == 0
    third = menos.worker("--worker-id", "third")
    finish("three")
    wait_for(lambda: "third" in processes(), what="third worker's samples")
    third.kill()
    third.wait()
    menos.worker("--worker-id", "third")
    finish("four")
    wait_for(lambda: fetch_runs() >= 14, what="restarted worker's samples")
    assert fetch_runs() == 14


def test_each_process_names_its_sessions_in_pg_stat_activity(menos: Menos) -> None:
    """pg_stat_activity tells an API from a worker or a dispatcher; a DSN's own
    `application_name` is kept."""
    menos.api()
    assert httpx.get(f"{menos.base_url}/ready", timeout=10).status_code == 200  # a session
    menos.worker("--worker-id", "named")
    menos.spawn(str(BIN / "dispatcher"))
    separator = "&" if "?" in menos.database_url else "?"
    menos.worker(
        "--worker-id",
        "chosen",
        MENOS_DATABASE_URL=f"{menos.database_url}{separator}application_name=chosen",
    )
    expected = {"menos api", "menos worker", "menos dispatcher", "chosen"}

    def named() -> set[str]:
        rows = sql(
            menos.database_url,
            "SELECT DISTINCT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        return {row["application_name"] for row in rows}

    wait_for(lambda: expected <= named(), timeout=60, what=f"sessions named {expected}")

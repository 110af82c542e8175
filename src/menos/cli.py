"""Argument parsing for every bin/ entry; builds the services and runs them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import httpx
import structlog

from menos import db, embedded, errors, settings, tools, versions
from menos import logging as menos_logging
from menos.pipeline import resource_keys
from menos.queue import maintenance, models, repository, stopping

if TYPE_CHECKING:
    from menos.pipeline import analyzers

log = structlog.get_logger("menos.cli")

EXIT_USAGE = 2
EXIT_FAILURE = 1
T = TypeVar("T")


# -- database resolution ---------------------------------------------------------------------


@contextlib.contextmanager
def database(conf: settings.Settings, *, create: bool = False) -> Iterator[str]:
    """The DSN to use: MENOS_DATABASE_URL, else the embedded server (attached or started).

    Only commands that apply migrations (`create`) make the embedded cluster when MENOS_HOME
    holds none: any other would make an empty one (run from the wrong directory, say) and
    then only find its schema missing.
    """
    if conf.database_url:
        yield conf.database_url
        return
    server = embedded.EmbeddedPostgres(conf.home, conf.pg_bindir)
    if not create and not server.initialized():
        raise errors.MenosError(
            f"no embedded database under {conf.home.absolute()}: run `make run` or"
            " `bin/menos db start` there first, or point MENOS_HOME at the one to use"
            " (or MENOS_DATABASE_URL at a server)"
        )
    with server.in_use() as running:
        yield running.dsn


async def _with_repo(
    dsn: str, use: Callable[[repository.Repository], Awaitable[int]], *, max_size: int = 4
) -> int:
    pool = await db.create_pool(dsn, min_size=1, max_size=max_size)
    try:
        return await use(repository.Repository(pool, db.Queries()))
    finally:
        await db.close_pool(pool)


async def _migrate(dsn: str) -> list[int]:
    conn = await db.connect(dsn)
    try:
        return await db.migrate(conn, db.Queries())
    finally:
        await conn.close()


def _stop_events() -> tuple[asyncio.Event, asyncio.Event]:
    """Events set by SIGTERM, SIGINT or SIGHUP (the terminal running the service closed): the
    first signal asks for a graceful stop (`stop`), a second one ends its grace period at once
    (`hurry`)."""
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, *_HANGUP):
        loop.add_signal_handler(sig, stopping.on_signal, stop, hurry)
    return stop, hurry


# -- commands --------------------------------------------------------------------------------


def cmd_migrate(conf: settings.Settings, args: argparse.Namespace) -> int:
    with database(conf, create=True) as dsn:
        applied = _run(_migrate(dsn))
    print(json.dumps({"applied": applied}))
    return 0


def cmd_api(conf: settings.Settings, args: argparse.Namespace) -> int:
    if not _can_listen(conf):  # before the database and migrations: it would fail after them
        return EXIT_FAILURE
    # A stop asked while the embedded server starts or the migrations run (they may wait for
    # locks for as long as a session holds them) ends the command there, as a stop: the
    # embedded server it started is stopped, and it exits 0 as when serving.
    for sig in _TERMINATING:
        signal.signal(sig, _terminate)
    try:
        return _api(conf)
    except (KeyboardInterrupt, Terminated):
        return 0


def _api(conf: settings.Settings) -> int:
    from menos.http import app as http_app
    from menos.http import serving

    with database(conf, create=True) as dsn:
        applied = _run(_migrate(dsn))
        log.info("migrations_applied", versions=applied)
        conf = settings.with_overrides(conf, database_url=dsn)
        # uvicorn stops gracefully on SIGTERM or SIGINT, then raises the signal again for the
        # handler it found: this one, so a requested stop ends with 0 as the services' do. A
        # signal coming before uvicorn listens for them (while the app is made) is kept, and
        # the server stops as soon as it has started.
        stop_requested: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT, *_HANGUP):
            signal.signal(sig, lambda signum, _frame: stop_requested.append(signum))
        serving.serve(
            http_app.create_app(conf),
            host=conf.host,
            port=conf.port,
            stop_requested=stop_requested,
        )
    return 0


def _analyzer(conf: settings.Settings, client: httpx.AsyncClient) -> analyzers.Analyzer:
    # Imported here: the analyzers' libraries are heavy and only workers need them.
    from menos.pipeline.analyzers import builtin, openai

    if conf.analyzer == "openai":
        return openai.OpenAIAnalyzer(
            client,
            base_url=conf.llm_base_url,
            model=conf.llm_model,
            api_key=conf.llm_api_key,
            timeout_s=conf.llm_timeout_s,
            max_chars=conf.pipeline_max_chars,
            json_mode=conf.llm_json_mode,
        )
    return builtin.BuiltinAnalyzer()


async def _run_worker(conf: settings.Settings, dsn: str, worker_id: str) -> int:
    from menos.pipeline import ssrf, stages
    from menos.queue import worker

    stop, hurry = _stop_events()
    await _require_schema(dsn)
    pool = await db.create_pool(dsn, min_size=1, max_size=conf.worker_concurrency + 3)
    pinned = httpx.AsyncClient(
        transport=ssrf.PinnedTransport(allow_private=conf.callback_allow_private),
        follow_redirects=False,
        timeout=10.0,
        cookies=ssrf.no_cookies(),
        headers={"user-agent": f"menos/{versions.app_version()}"},
    )
    plain = httpx.AsyncClient(
        timeout=conf.llm_timeout_s,
        cookies=ssrf.no_cookies(),
        headers={"user-agent": f"menos/{versions.app_version()}"},
    )
    try:
        ctx = stages.Context(
            http=pinned,
            metadata_http=plain,
            analyzer=_analyzer(conf, plain),
            max_body_bytes=conf.max_body_bytes,
            oembed_url=conf.youtube_oembed_url,
            youtube_languages=conf.youtube_languages,
        )
        config = worker.WorkerConfig(
            worker_id=worker_id,
            concurrency=conf.worker_concurrency,
            max_processing=conf.max_concurrency,
            lease_s=conf.job_lease_s,
            max_attempts=conf.job_max_attempts,
            poll_s=conf.worker_poll_s,
            shutdown_grace_s=conf.worker_shutdown_grace_s,
            pipeline_version=versions.app_version(),
        )
        repo = repository.Repository(pool, db.Queries())
        purger = maintenance.Purger(_purge_config(conf), repo)
        await stopping.run_until_stopped(
            worker.Worker(config, repo, ctx, dsn=dsn, duties=[purger.run]).run(stop, hurry),
            stop,
            hurry=hurry,
            grace_s=conf.worker_shutdown_grace_s,
            name="worker",
        )
    finally:
        await pinned.aclose()
        await plain.aclose()
        await db.close_pool(pool)
    return 0


def cmd_worker(conf: settings.Settings, args: argparse.Namespace) -> int:
    if args.concurrency is not None:
        conf = settings.with_overrides(conf, worker_concurrency=args.concurrency)
    worker_id = args.worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    with database(conf) as dsn:
        return asyncio.run(_run_worker(conf, dsn, worker_id))


def _purge_config(conf: settings.Settings) -> maintenance.PurgeConfig:
    return maintenance.PurgeConfig(
        compact_days=conf.retention_compact_days, full_days=conf.retention_full_days
    )


def cmd_dispatcher(conf: settings.Settings, args: argparse.Namespace) -> int:
    from menos.queue import dispatcher

    async def run(dsn: str) -> int:
        await _require_schema(dsn)
        await dispatcher.serve(conf, dsn, *_stop_events())
        return 0

    with database(conf) as dsn:
        return asyncio.run(run(dsn))


async def _require_schema(dsn: str) -> None:
    conn = await db.connect(dsn)
    try:
        await db.require_current(conn, db.Queries())
    finally:
        await conn.close()


def _repo_command(
    conf: settings.Settings, use: Callable[[repository.Repository], Awaitable[int]]
) -> int:
    async def run(dsn: str) -> int:
        await _require_schema(dsn)
        return await _with_repo(dsn, use)

    with database(conf) as dsn:
        return _run(run(dsn))


def cmd_reprocess(conf: settings.Settings, args: argparse.Namespace) -> int:
    return _repo_command(
        conf,
        lambda repo: tools.reprocess(
            repo,
            args.target,
            owner=args.owner,
            force=args.force,
            wait=args.wait,
            callback_url=args.callback_url,
            version=versions.app_version(),
            data_tier=conf.data_tier,
            allow_private=conf.callback_allow_private,
            out=sys.stdout,
        ),
    )


def cmd_classify(conf: settings.Settings, args: argparse.Namespace) -> int:
    return _repo_command(
        conf,
        lambda repo: tools.classify(
            repo,
            owner=args.owner,
            content_type=args.content_type,
            status=args.status,
            stale=args.stale,
            limit=args.limit,
            dry_run=args.dry_run,
            version=versions.app_version(),
            data_tier=conf.data_tier,
            out=sys.stdout,
        ),
    )


def cmd_export(conf: settings.Settings, args: argparse.Namespace) -> int:
    return _repo_command(
        conf,
        lambda repo: tools.export(
            repo,
            owner=args.owner,
            fmt=args.format,
            out=args.out,
            content_id=args.content_id,
            stdout=sys.stdout,
        ),
    )


def cmd_purge(conf: settings.Settings, args: argparse.Namespace) -> int:
    return _repo_command(
        conf,
        lambda repo: tools.purge(
            maintenance.Purger(_purge_config(conf), repo), dry_run=args.dry_run, out=sys.stdout
        ),
    )


def cmd_jobs(conf: settings.Settings, args: argparse.Namespace) -> int:
    async def listing(repo: repository.Repository) -> int:
        page = await repo.list_jobs(
            owner=args.owner, status=args.status, content_id=None, after=None, limit=args.limit
        )
        for job in page.items:
            print(
                f"{job.job_id}  {job.status:<10}  {job.current_stage or '-':<8}  "
                f"{job.owner}  {tools.rfc3339(job.created_at)}  {job.error_code or ''}".rstrip()
            )
        return 0

    async def show(repo: repository.Repository) -> int:
        job = await repo.job(args.job_id, owner=None)
        if job is None:
            print(f"menos: no job {args.job_id}", file=sys.stderr)
            return EXIT_FAILURE
        callback = await repo.callback(job.job_id)
        await repo.audit(  # stored before anything of the full tier is shown
            "audit.full_tier_access",
            owner=job.owner,
            actor_key_id=None,
            subject=job.job_id,
            detail={"data_tier": job.data_tier, "via": "bin/menos"},
        )
        print(tools.job_json(job, callback))
        return 0

    async def cancel(repo: repository.Repository) -> int:
        outcome = await repo.request_cancel(
            args.job_id, owner=None, actor=repository.Actor(None, {"via": "bin/menos"})
        )
        if outcome is None:
            print(f"menos: no job {args.job_id}", file=sys.stderr)
            return EXIT_FAILURE
        result = outcome.result
        print(
            json.dumps(
                {"job_id": str(args.job_id), "previous": outcome.previous, "outcome": result}
            )
        )
        return 0 if result != "refused" else EXIT_FAILURE

    action = {"list": listing, "show": show, "cancel": cancel}[args.jobs_command]
    return _repo_command(conf, action)


def cmd_keys(conf: settings.Settings, args: argparse.Namespace) -> int:
    def shown(key: repository.CreatedKey) -> str:
        if args.json:
            return json.dumps(
                {
                    "key_id": str(key.key_id),
                    "owner": key.owner,
                    "role": key.role,
                    "api_key": key.api_key,
                    "webhook_secret": key.webhook_secret,
                },
                separators=(",", ":"),
            )
        return (
            f"key_id:         {key.key_id}\nowner:          {key.owner} ({key.role})\n"
            f"api_key:        {key.api_key}\nwebhook_secret: {key.webhook_secret}\n"
            "Keep the key: it is shown only once. The secret is the owner's, for every key."
        )

    async def create(repo: repository.Repository) -> int:
        role: models.Role = "admin" if args.admin else "user"
        await repo.create_key(args.owner, role, hand_over=lambda key: _hand_over(shown(key)))
        return 0

    async def listing(repo: repository.Repository) -> int:
        for key in await repo.list_keys(args.owner):
            state = "revoked" if key.revoked_at else "active"
            print(
                f"{key.key_id}  {key.owner}  {key.role}  {state}  {tools.rfc3339(key.created_at)}"
            )
        return 0

    async def revoke(repo: repository.Repository) -> int:
        key_id: uuid.UUID = args.key_id
        if not await repo.revoke_key(key_id):
            print(f"menos: no active key {key_id}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"revoked {key_id}")
        return 0

    async def rotate(repo: repository.Repository) -> int:
        rotation = await repo.rotate_secret(args.owner, hand_over=_hand_over)
        if rotation is None:
            print(f"menos: no owner {args.owner}", file=sys.stderr)
            return EXIT_FAILURE
        if rotation.dropped_until is not None:
            until = tools.rfc3339(rotation.dropped_until.replace(microsecond=0))
            print(
                "menos: warning: the secret used before the last rotation no longer signs"
                f" (it would have until {until});"
                " receivers still verifying with it now reject callbacks",
                file=sys.stderr,
            )
        return 0

    action = {"create": create, "list": listing, "revoke": revoke, "rotate-secret": rotate}
    # Only a new key is worth a new cluster: listing, revoking or rotating in an empty one
    # (run from the wrong directory) would only find nothing there, and leave it behind.
    with database(conf, create=args.keys_command == "create") as dsn:
        _run(_migrate(dsn))
        return _run(_with_repo(dsn, action[args.keys_command]))


def cmd_db(conf: settings.Settings, args: argparse.Namespace) -> int:
    if conf.database_url:
        if args.db_command == "url":
            print(conf.database_url)
            return 0
        print(
            "menos: MENOS_DATABASE_URL is set: there is no embedded database to manage",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    server = embedded.EmbeddedPostgres(conf.home, conf.pg_bindir)
    if args.db_command == "start":
        with server.in_use() as running:
            server.keep(running)
            try:
                applied = _run(_migrate(running.dsn))  # ready for psql: schema there
            except errors.MenosError as exc:
                raise errors.MenosError(
                    f"{exc} (the database stays running at {running.dsn};"
                    " bin/menos db stop stops it)"
                ) from exc
        dsn = running.dsn
        log.info("migrations_applied", versions=applied)
        print(dsn)
        return 0
    if args.db_command == "stop":
        with server.unused() as unused:
            if not unused and not args.force:
                # Stopping it would leave `bin/menos dev`, an API or workers without their
                # database, with nothing to start it again.
                print(
                    f"menos: the embedded database under {conf.home} is in use by running"
                    " commands (bin/menos dev, bin/api, bin/worker, ...); stop them first,"
                    " or use --force",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
            stopped = server.stop()
        print("stopped" if stopped else "not running")
        return 0
    found = server.running()
    if found is None:
        print(
            f"menos: the embedded database under {conf.home} is not running (bin/menos db start)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(found.dsn)
    return 0


# -- dev: everything in the foreground ---------------------------------------------------------


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _dev_key(conf: settings.Settings, dsn: str) -> str:
    key_file = conf.home / "dev_api_key"

    async def ensure(repo: repository.Repository) -> int:
        if key_file.exists():
            # Not UTF-8 (saved by an editor as UTF-16, say): it is no key of ours, replace it.
            existing = key_file.read_text(encoding="utf-8", errors="replace").strip()
            if await repo.principal(existing) is not None:
                key_file.chmod(0o600)  # whatever it was made since
                return 0
        # Written before the key is committed: a key that cannot be kept is not made.
        await repo.create_key(
            "local",
            "admin",
            hand_over=lambda created: tools.replace_file(
                key_file, created.api_key + "\n", mode=0o600
            ),
        )
        return 0

    asyncio.run(_with_repo(dsn, ensure))
    return key_file.read_text(encoding="utf-8").strip()


def cmd_dev(conf: settings.Settings, args: argparse.Namespace) -> int:
    # Another server there would answer the readiness check in the API's stead.
    if not _can_listen(conf):
        return EXIT_FAILURE
    conf.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with database(conf, create=True) as dsn:
        log.info("migrations_applied", versions=asyncio.run(_migrate(dsn)))
        key = _dev_key(conf, dsn)
        env = {**os.environ, "MENOS_DATABASE_URL": dsn, "MENOS_LOG_FORMAT": conf.log_format}
        # The children use the embedded server as long as they run: when dev is killed they
        # stop gracefully (a worker finishes or gives back its jobs), and the guard that then
        # stops the server must wait for them, as `in_use` makes it wait for commands.
        held = (
            None
            if conf.database_url
            else embedded.EmbeddedPostgres(conf.home, conf.pg_bindir).hold()
        )
        try:
            children = {
                name: subprocess.Popen(
                    [sys.executable, "-m", "menos", name],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                    start_new_session=True,
                    pass_fds=() if held is None else (held,),
                )
                for name in ("api", "worker", "dispatcher")
            }
        finally:
            if held is not None:
                os.close(held)  # the children's copies hold the lock now
        stops_asked = 0
        told: set[str] = set()

        def stop_children() -> None:
            # The dispatcher only once the worker is gone, or on a second Ctrl-C: the callbacks
            # of the jobs the worker finishes in its grace period are delivered before
            # everything stops.
            worker_gone = children["worker"].poll() is not None
            for name, proc in children.items():
                if proc.poll() is None and (name != "dispatcher" or worker_gone or stops_asked > 1):
                    proc.send_signal(signal.SIGTERM)
                    told.add(name)

        def stop(*_: object) -> None:
            # Passed on at once: the first Ctrl-C stops the children gracefully, a second one
            # (however soon after the first) ends their grace periods.
            nonlocal stops_asked
            stops_asked += 1
            stop_children()

        # SIGHUP: the terminal running `make run` was closed; its server must not be left.
        for sig in (signal.SIGINT, signal.SIGTERM, *_HANGUP):
            signal.signal(sig, stop)
        host = f"[{conf.host}]" if ":" in conf.host else conf.host  # an IPv6 address
        base = f"http://{host}:{conf.port}"
        if _wait_http(f"{base}/health", children["api"]):
            print(
                f"\nmenos {versions.app_version()} is running\n"
                f"  API:      {base}  (routes under /api/v1)\n  docs:     {base}/schema/swagger\n"
                f"  API key:  {key}\n\nTry it:\n"
                f"  curl -s -X POST {base}/api/v1/content -H 'Authorization: Bearer {key}' "
                "-H 'Content-Type: application/json' "
                '-d \'{"text": "# Hello menos\\n\\nMy first note, ingested by a worker."}\'\n'
                f"  then: curl -s {base}/api/v1/jobs/<job_id> -H 'Authorization: Bearer {key}'\n"
                "\nCtrl-C stops everything.",
                flush=True,
            )
        code = 0
        watch = _ServerWatch(conf)
        while not stops_asked:
            exited = [name for name, proc in children.items() if proc.poll() is not None]
            if exited:
                print(f"menos: {', '.join(exited)} exited; stopping", file=sys.stderr, flush=True)
                code = EXIT_FAILURE
                break
            watch.check()
            with contextlib.suppress(subprocess.TimeoutExpired):
                children["api"].wait(timeout=0.5)
        if not stops_asked:  # a child exited on its own: stop the others
            stop_children()
        for proc in children.values():  # api, worker, then dispatcher
            if proc is children["dispatcher"] and "dispatcher" not in told and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=conf.worker_shutdown_grace_s + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code


class _ServerWatch:
    """Says on stderr when the embedded server `dev` runs on stops under it (killed, crashed,
    `db stop --force`) and when it is back: the children only log that they cannot reach it."""

    def __init__(self, conf: settings.Settings) -> None:
        self._server = (
            None if conf.database_url else embedded.EmbeddedPostgres(conf.home, conf.pg_bindir)
        )
        self._up = True
        # The children were given the DSN of this port: a server back on another one (its
        # port taken meanwhile) is out of their reach until they are started again.
        started = None if self._server is None else self._server.running()
        self._port = None if started is None else started.port

    def check(self) -> None:
        if self._server is None:
            return
        running = self._server.running()
        if (running is not None) == self._up:
            return
        self._up = running is not None
        if running is None:
            message = (
                f"the embedded PostgreSQL stopped (see {self._server.log_file}); `bin/menos db "
                "start` starts it again, and keeps it running after this command ends, until "
                "`bin/menos db stop`"
            )
        elif self._port in (None, running.port):
            message = "the embedded PostgreSQL is running again"
        else:
            message = (
                f"the embedded PostgreSQL is running again, but on port {running.port} instead "
                f"of {self._port}, where the api, worker and dispatcher still look for it: stop "
                "this command (Ctrl-C) and start it again"
            )
        print(f"menos: {message}", file=sys.stderr, flush=True)


def _can_listen(conf: settings.Settings) -> bool:
    """Whether the API can listen on MENOS_HOST:MENOS_PORT; if not, say why on stderr."""
    try:
        asyncio.run(_try_listen(conf.host, conf.port))
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        # Not a name or an address of this machine (`999.1.1.1`, a typo): the setting at fault.
        elsewhere = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        # asyncio words a bind error at length; the system's own words are enough here.
        if isinstance(exc, socket.gaierror) or exc.errno is None:
            reason = exc.strerror or str(exc)
        else:
            reason = os.strerror(exc.errno)
        print(
            f"menos: cannot listen on {conf.host} port {conf.port} ({reason})"
            + ("; set MENOS_PORT to a free port" if busy else "")
            + ("; set MENOS_HOST to an address of this machine" if elsewhere else ""),
            file=sys.stderr,
        )
        return False
    return True


async def _try_listen(host: str, port: int) -> None:
    """Listen where the API will, as it will (on every address `host` resolves to), and stop."""
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    server.close()
    await server.wait_closed()


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


# -- parsing ---------------------------------------------------------------------------------


def _command(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    more: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose own `--help` explains it: its one-line help, then `more`."""
    description = f"{help[0].upper()}{help[1:]}." + (f" {more}" if more else "")
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=help, description=description, allow_abbrev=False
    )
    parser.set_defaults(usage_of=parser)  # the deepest command given wins: its usage is shown
    return parser


def build_parser(prog: str = "menos") -> argparse.ArgumentParser:
    """The command tree of `bin/menos` (other bin/ entries are its subcommands)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="menos: self-hosted content ingest on a PostgreSQL job queue.",
        epilog="Configuration comes from MENOS_* environment variables (see docs/operations.md). "
        "Exit codes: 0 success, 1 failure, 2 usage error.",
        # A flag is spelled out: a script's `--forc` must not become another flag once one
        # with the same beginning is added.
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(
        sub,
        "dev",
        help="embedded database, migrations, API, a worker and the dispatcher in the foreground",
    )
    _command(sub, "migrate", help="apply pending database migrations")
    _command(
        sub,
        "api",
        help="serve the HTTP API (applies migrations first)",
        more="Listens on MENOS_HOST:MENOS_PORT until SIGTERM/SIGINT/SIGHUP. Run several behind a "
        "load balancer if you like: all state is in PostgreSQL.",
    )
    w = _command(
        sub,
        "worker",
        help="claim and run jobs until SIGTERM/SIGINT/SIGHUP",
        more="On SIGTERM/SIGINT/SIGHUP it stops claiming, lets running jobs finish within "
        "MENOS_WORKER_SHUTDOWN_GRACE_S and gives the rest back to pending; a second signal "
        "gives them back at once. Any number may run.",
    )
    w.add_argument(
        "--concurrency",
        type=_whole_number(1, settings.MAX_WORKER_SLOTS),
        metavar="N",
        help=f"job slots in this process, 1-{settings.MAX_WORKER_SLOTS} "
        "(default MENOS_WORKER_CONCURRENCY)",
    )
    w.add_argument(
        "--worker-id",
        type=_worker_id,
        metavar="ID",
        help="name shown in jobs and logs (default host:pid:random)",
    )

    keys = _command(sub, "keys", help="API keys and webhook secrets")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = _command(ksub, "create", help="a new key (shown once) and the owner's webhook secret")
    kc.add_argument(
        "--owner", required=True, type=_owner_name, metavar="NAME", help="created if new"
    )
    kc.add_argument("--admin", action="store_true", help="the key sees and acts on everything")
    kc.add_argument("--json", action="store_true", help="print one compact JSON line")
    kl = _command(ksub, "list", help="list keys (never the keys themselves)")
    kl.add_argument("--owner", type=_owner_name, metavar="NAME", help="only this owner's keys")
    kr = _command(ksub, "revoke", help="revoke a key by its key_id")
    kr.add_argument("key_id", type=_key_id)
    ks = _command(ksub, "rotate-secret", help="new webhook secret; the old one signs for 24 h")
    ks.add_argument("--owner", required=True, type=_owner_name, metavar="NAME")

    _command(
        sub,
        "dispatcher",
        help="deliver callback events from the outbox until stopped",
        more="Sends each event signed (Standard Webhooks), at most 3 attempts with backoff "
        "(MENOS_CALLBACK_TIMEOUT_S, MENOS_CALLBACK_BACKOFF_S). Any number may run at once.",
    )
    rp = _command(
        sub,
        "reprocess",
        help="re-run one item (exit 0 completed, 1 failed, 2 cancelled with --wait)",
    )
    rp.add_argument("target", metavar="CONTENT_ID|URL", type=_content_target)
    rp.add_argument(
        "--owner",
        type=_owner_name,
        metavar="NAME",
        help="the owner, when a URL is known to several",
    )
    rp.add_argument("--force", action="store_true", help="re-run even if current")
    rp.add_argument("--wait", action="store_true", help="follow the job's stages until it ends")
    rp.add_argument(
        "--callback-url",
        type=_callback_url,
        metavar="URL",
        help="send a callback when the run ends",
    )
    cp = _command(sub, "classify", help="bulk re-run pending, failed or stale content")
    cp.add_argument("--owner", type=_owner_name, metavar="NAME", help="only this owner's content")
    cp.add_argument("--content-type", choices=["youtube", "web", "markdown"], help="only this type")
    cp.add_argument(
        "--status",
        choices=list(models.JOB_STATUSES),
        help="only content in this status (default: pending and failed)",
    )
    cp.add_argument(
        "--stale", action="store_true", help="also content completed by an older pipeline_version"
    )
    cp.add_argument("--limit", type=_whole_number(1), metavar="N", help="at most N items")
    cp.add_argument("--dry-run", action="store_true", help="list the content ids, enqueue nothing")
    ep = _command(sub, "export-summaries", help="export completed results")
    ep.add_argument("--owner", type=_owner_name, metavar="NAME", help="only this owner's results")
    ep.add_argument(
        "--format", choices=["jsonl", "csv", "markdown"], default="jsonl", help="default jsonl"
    )
    ep.add_argument(
        "--out",
        type=_path,
        metavar="PATH",
        help="file (jsonl, csv) or directory (markdown); default stdout or ./export",
    )
    ep.add_argument("--content-id", type=uuid.UUID, metavar="ID", help="only this item")
    pp = _command(sub, "purge", help="apply retention now (MENOS_RETENTION_*_DAYS)")
    pp.add_argument("--dry-run", action="store_true", help="count what would be removed")
    jp = _command(sub, "jobs", help="inspect and cancel jobs")
    jsub = jp.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jl = _command(jsub, "list", help="newest jobs first")
    jl.add_argument("--owner", type=_owner_name, metavar="NAME", help="only this owner's jobs")
    jl.add_argument("--status", choices=list(models.JOB_STATUSES), help="only jobs in this status")
    jl.add_argument(
        "--limit",
        type=_whole_number(1, 1000),
        default=50,
        metavar="N",
        help="at most N jobs (1-1000, default 50)",
    )
    js = _command(jsub, "show", help="one job as JSON (verbose view)")
    js.add_argument("job_id", type=uuid.UUID)
    jc = _command(jsub, "cancel", help="cancel a job (pending: at once; processing: requested)")
    jc.add_argument("job_id", type=uuid.UUID)

    dbp = _command(sub, "db", help="the embedded PostgreSQL under MENOS_HOME")
    dsub = dbp.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    _command(
        dsub,
        "start",
        help="start the embedded database in the background (or find it running), apply "
        "pending migrations and print its DSN",
    )
    ds = _command(
        dsub,
        "stop",
        help="stop the embedded database (fast shutdown)",
        more="Refused while commands use it (bin/menos dev, bin/api, bin/worker, ...), unless "
        "--force.",
    )
    ds.add_argument("--force", action="store_true", help="stop it even while commands use it")
    _command(dsub, "url", help="print the DSN of the running embedded database")
    return parser


COMMANDS: dict[str, Callable[[settings.Settings, argparse.Namespace], int]] = {
    "dev": cmd_dev,
    "migrate": cmd_migrate,
    "api": cmd_api,
    "worker": cmd_worker,
    "keys": cmd_keys,
    "db": cmd_db,
    "dispatcher": cmd_dispatcher,
    "reprocess": cmd_reprocess,
    "classify": cmd_classify,
    "export-summaries": cmd_export,
    "purge": cmd_purge,
    "jobs": cmd_jobs,
}

# Commands that log (to stderr) and print nothing a caller reads.
_SERVICES = frozenset({"api", "worker", "dispatcher", "dev"})


class Terminated(BaseException):
    """SIGTERM or SIGHUP to a command that is not a service: raised where it runs, so that it
    unwinds as after Ctrl-C and the embedded server it started stops instead of being left."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# SIGHUP ignored when this process started (`nohup bin/worker &`) stays ignored: the command
# was meant to outlive its terminal, and its shell still sends it SIGHUP when that closes.
_HANGUP = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
_TERMINATING = (signal.SIGTERM, *_HANGUP)


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run for a command that is not a service: SIGTERM or SIGHUP cancels `main`, as
    Ctrl-C does in asyncio.run, then raises Terminated. (Raised from the handler, Terminated
    would land in whatever the loop runs, a driver's read say, and asyncio would swallow it.)"""
    got: list[int] = []

    async def cancellable() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def cancel(signum: int, _frame: object) -> None:
            got.append(signum)
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake the loop, as asyncio.run does

        previous = {sig: signal.signal(sig, cancel) for sig in _TERMINATING}
        try:
            return await main
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    try:
        return asyncio.run(cancellable())
    except asyncio.CancelledError:
        if got:
            raise Terminated(got[0]) from None
        raise
    finally:
        main.close()  # not started when a signal came first: not "never awaited"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m menos`."""
    if sys.stderr is None:  # started with `2>&-`
        menos_logging.stderr_to_devnull()
    # The bin/ wrappers say how to run this command again (`bin/menos`); `menos` otherwise.
    parser = build_parser(os.environ.get("MENOS_PROG") or "menos")
    args, unknown = parser.parse_known_args(argv)
    # Reported by the command they were given to, with its usage (argparse would name the
    # top-level command for both).
    if unknown:
        given = sys.argv[1:] if argv is None else argv
        _given_to(parser, args.usage_of, given, unknown).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not _is_utf8(text):
                args.usage_of.error(f"{name}: not valid UTF-8")
    try:
        conf = settings.from_env()
    except errors.SettingsError as exc:
        print(f"menos: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    menos_logging.configure(conf.log_format)
    db.application_name = f"menos {args.command}"
    if sys.stdout is None and args.command not in _SERVICES:  # started with `>&-`
        if getattr(args, "out", None) is None:
            # Refused before acting: a key's secret, say, must not be made and then lost.
            print("menos: standard output is closed: nowhere to write the result", file=sys.stderr)
            return EXIT_FAILURE
        # The result goes to --out; stdout would only have listed the files written.
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process
    if args.command not in _SERVICES:  # the services stop on these signals their own way
        for sig in _TERMINATING:
            signal.signal(sig, _terminate)
    try:
        return COMMANDS[args.command](conf, args)
    except errors.MenosError as exc:
        print(f"menos: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except asyncpg.InsufficientPrivilegeError as exc:
        print(
            f"menos: this database role may not use menos's tables: {exc} (docs/operations.md,"
            " Migrations, lists the grants a role needs)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            # The reader went away (`| head`): nothing more to write, and no traceback.
            # Python would still fail flushing stdout at exit: it points at /dev/null now.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILURE
        where = f": {exc.filename}" if exc.filename else ""
        print(f"menos: {exc.strerror or str(exc) or type(exc).__name__}{where}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Terminated as exc:
        return 128 + exc.signum


def _given_to(
    top: argparse.ArgumentParser,
    deepest: argparse.ArgumentParser,
    given: list[str],
    unknown: list[str],
) -> argparse.ArgumentParser:
    """The command that unknown arguments were given to: the one whose name they follow
    (`db --force stop` gives `--force` to `db`, which does not know it, not to `db stop`)."""
    owner, start = top, 0
    for name in deepest.prog.removeprefix(top.prog).split():  # "menos db stop": db, then stop
        end = given.index(name, start)
        if set(unknown) & set(given[start:end]):
            return owner
        owner, start = _subcommand(owner, name), end + 1
    return owner


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def _hand_over(secret: str) -> None:
    """Print a secret about to be kept; raise, so that it is not kept, when it cannot be."""
    try:
        print(secret, flush=True)
    except OSError as exc:  # a full disk, a closed pipe
        # What is left in the buffer goes nowhere: Python would fail flushing it at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise errors.MenosError(
            f"could not write the result ({exc.strerror or exc}): nothing was changed"
        ) from exc


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (the write that failed may have
    emptied the buffer: flushing it again can succeed, but the pipe reports its error)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _content_target(text: str) -> str:
    """`reprocess CONTENT_ID|URL`: a content id or a URL menos can identify."""
    if not _is_utf8(text):  # checked here: the check after parsing comes too late for a type
        raise argparse.ArgumentTypeError("not valid UTF-8")
    try:
        tools.check_target(text)
    except errors.InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def _worker_id(text: str) -> str:
    """`--worker-id`: one line of visible text, as it appears in jobs and log lines."""
    if not _is_utf8(text):
        raise argparse.ArgumentTypeError("not valid UTF-8")
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be blank")
    if not text.isprintable():
        raise argparse.ArgumentTypeError("must not hold control characters")
    return text


def _path(text: str) -> Path:
    """A path given on the command line: an empty one would be the current directory."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def _owner_name(text: str) -> str:
    """`--owner`: checked while parsing, so that a name no owner can have (a typo, an empty
    value) is refused before the command starts (or creates) a database, rather than
    matching nothing."""
    if not _is_utf8(text):
        raise argparse.ArgumentTypeError("not valid UTF-8")
    if not repository.OWNER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(repository.OWNER_NAME_RULE)
    return text


def _key_id(text: str) -> uuid.UUID:
    """`keys revoke KEY_ID`: checked while parsing, so that a malformed id is refused before
    the command starts (or creates) a database."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a key id: {text!r}") from None


def _callback_url(text: str) -> str:
    """`--callback-url`: a well-formed http(s) URL (whether its address is allowed is known
    only once resolved, by the command: a refusal then exits 1)."""
    if not _is_utf8(text):
        raise argparse.ArgumentTypeError("not valid UTF-8")
    try:
        resource_keys.check_url(text, "--callback-url")
    except errors.InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def _whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argument type: a whole number from `least` to `most` (no bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < least or (most is not None and value > most):
            bounds = f"{least} or more" if most is None else f"from {least} to {most}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse


def _is_utf8(text: str) -> bool:
    """False for an argument holding bytes that were not UTF-8 (surrogate-escaped)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

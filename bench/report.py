"""Raw figures to the markdown table; parsing wrk and py-spy output; a fallback load generator."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import time
from collections import Counter
from typing import Any

import httpx

from bench import harness


def peer_versions() -> dict[str, str]:
    """The installed peer versions (from the peer environment's pip)."""
    done = subprocess.run(
        [str(harness.PEER_PYTHON), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    wanted = {"pgqueuer", "procrastinate", "asyncpg", "psycopg"}
    found = {}
    for line in done.stdout.splitlines():
        name, _, version = line.partition("==")
        if name.lower() in wanted:
            found[name.lower()] = version
    return found


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str, *, threads: int, connections: int) -> dict[str, Any]:
    """req/s, latency percentiles (ms) and error counts from `wrk --latency` output."""
    result: dict[str, Any] = {"tool": "wrk", "threads": threads, "connections": connections}
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    result["requests_per_s"] = float(match.group(1)) if match else None
    for pct in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        result[f"p{pct}_ms"] = round(_ms(found.group(1)), 2) if found else None
    match = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out)
    result["requests"] = int(match.group(1)) if match else None
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors:(.*)", out)
    result["socket_errors"] = match.group(1).strip() if match else ""
    return result


async def httpx_load(
    base_url: str, api_key: str, seconds: float, connections: int
) -> dict[str, Any]:
    """Closed-loop fallback load generator (when wrk cannot be installed)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(
            base_url=base_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
        ) as http:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                began = time.perf_counter()
                answer = await http.post(
                    "/api/v1/ingest", json={"url": f"https://example.com/httpx/{index}/{n}"}
                )
                latencies.append((time.perf_counter() - began) * 1000)
                errors += answer.status_code >= 300

    began = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(connections)))
    elapsed = time.monotonic() - began
    pct = harness.percentiles(latencies, (50, 75, 90, 99))
    return {
        "tool": "httpx (wrk unavailable)",
        "connections": connections,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        **{f"{k}_ms": round(v, 2) for k, v in pct.items()},
        "non_2xx": errors,
    }


def socket_errors(result: dict[str, Any]) -> int:
    """Requests wrk gave up on (connect, read, write errors and timeouts): no answer at all,
    so neither its request count nor its latency percentiles hold them."""
    return sum(int(n) for n in re.findall(r"\d+", str(result.get("socket_errors") or "")))


def http_failure(result: dict[str, Any]) -> str | None:
    """Why an HTTP ingest measurement is no measurement (requests refused, unanswered or none
    made)."""
    if not result.get("requests_per_s"):
        return "no ingest request was answered"
    if result.get("non_2xx"):
        return f"{result['non_2xx']} of {result.get('requests')} ingest requests were not 2xx"
    if socket_errors(result):
        return f"ingest requests got no answer: socket errors {result['socket_errors']}"
    return None


def pipeline_failure(rows: list[dict[str, Any]]) -> str | None:
    """Why a pipeline measurement is no measurement: jobs failed, or callbacks went missing."""
    short = [
        f"{row['workers']} workers: {row['failed']} failed, "
        f"{row['callbacks_delivered']}/{row['jobs']} callbacks delivered"
        for row in rows
        if row.get("failed")
        or (row.get("callbacks", True) and row["callbacks_delivered"] < row["jobs"])
    ]
    return "; ".join(short) or None


def collapse_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"pct": round(100 * n / total, 1), "frame": frame}
            for frame, n in counter.most_common(top)
        ]

    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


# -- the markdown document --------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}×"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def _by(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _claims_per_job(row: dict[str, Any]) -> float | None:
    if not row.get("claims") or not row.get("jobs"):
        return None
    return round(row["claims"] / row["jobs"], 3)


def _cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_ms_per_job") or {}
    parts = [cpu.get(k) for k in ("workers", "postgres", "dispatcher", "receiver")]
    return " · ".join("-" if v is None else f"{v:.1f}" for v in parts)


def _drain_cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_us_per_job")
    return f"{cpu['drivers']:.0f} + {cpu['postgres']:.0f}" if cpu else "-"


def markdown(doc: dict[str, Any]) -> str:
    """The result table: every comparison as a ratio, with the performance targets."""
    out: list[str] = []
    targets: list[tuple[str, str, bool | None]] = []
    machine = doc["machine"]
    out.append(f"# menos benchmarks — {doc['at']} ({doc['mode']})\n")
    out.append(
        f"{machine['cpus']} CPUs, Python {machine['python']}, {machine['postgres']}; "
        f"versions {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}; "
        f"run took {doc['total_seconds']:.0f} s.\n"
    )
    source = doc.get("menos_source") or {}
    if source:
        changed = source.get("before") != source.get("after")
        out.append(
            f"menos source fingerprint {source.get('before')}"
            + (f" → {source.get('after')} (**menos changed during the run**)" if changed else "")
            + ".\n"
        )
    fsync = doc.get("fsync_ops_per_s") or {}
    if fsync:
        out.append(
            "Disk flush rate (pg_test_fsync, one 8 kB write, fdatasync ops/s): "
            f"{fsync.get('before', {}).get('fdatasync')} before the run, "
            f"{fsync.get('after', {}).get('fdatasync')} after. Throughput that waits on commits "
            "follows this number; figures are medians of interleaved rounds where stated.\n"
        )

    drain = doc.get("drain")
    if drain:
        out.append(
            "## Queue core: drain, no-op jobs, 2 worker processes per side "
            "(median of interleaved rounds)\n"
        )
        out.append(
            "| batch | menos jobs/s | pgqueuer jobs/s | procrastinate jobs/s "
            "| menos ÷ pgqueuer (≥ 1.0×) | menos ÷ procrastinate (≥ 10×) "
            "| commits/job m · pq · pr | statements/job m · pq · pr | WAL bytes/job m · pq · pr "
            "| CPU µs/job, drivers + postgres: m · pq · pr |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for batch in sorted({r["batch"] for r in drain}):
            m, pq, pr = (_by(drain, side=s, batch=batch) or {} for s in harness.SIDES)
            out.append(
                f"| {batch} | {m.get('jobs_per_s')} | {pq.get('jobs_per_s')} "
                f"| {pr.get('jobs_per_s')} | {_ratio(m.get('jobs_per_s'), pq.get('jobs_per_s'))} "
                f"| {_ratio(m.get('jobs_per_s'), pr.get('jobs_per_s'))} "
                f"| {m.get('commits_per_job')} · {pq.get('commits_per_job')} · "
                f"{pr.get('commits_per_job')} "
                f"| {m.get('statements_per_job')} · {pq.get('statements_per_job')} · "
                f"{pr.get('statements_per_job')} "
                f"| {m.get('wal_bytes_per_job')} · {pq.get('wal_bytes_per_job')} · "
                f"{pr.get('wal_bytes_per_job')} "
                f"| {' · '.join(_drain_cpu(row) for row in (m, pq, pr))} |"
            )
            if m and pq:
                targets.append(
                    (f"drain ≥ 1.0× pgqueuer at batch {batch}",
                     _ratio(m["jobs_per_s"], pq["jobs_per_s"]),
                     m["jobs_per_s"] >= pq["jobs_per_s"])
                )  # fmt: skip
            if m and pr:
                targets.append(
                    (f"drain ≥ 10× procrastinate at batch {batch}",
                     _ratio(m["jobs_per_s"], pr["jobs_per_s"]),
                     m["jobs_per_s"] >= 10 * pr["jobs_per_s"])
                )  # fmt: skip
        out.append("")

    if drain and any(row.get("waits_pct") for row in drain):
        out.append(
            "What the sides' database backends were doing during the drains "
            "(pg_stat_activity every 20 ms, share of samples):\n"
        )
        out.append("| batch | side | top wait events |")
        out.append("|---:|---|---|")
        for row in drain:
            waits = ", ".join(f"{k} {v} %" for k, v in list(row.get("waits_pct", {}).items())[:4])
            out.append(f"| {row['batch']} | {row['side']} | {waits} |")
        out.append("")

    enqueue = doc.get("enqueue")
    if enqueue:
        out.append("## Queue core: enqueue, one client (batch 1 = single)\n")
        out.append(
            "| jobs per call | menos jobs/s | pgqueuer jobs/s | procrastinate jobs/s "
            "| menos ÷ pgqueuer | menos ÷ procrastinate | commits/job m · pq · pr |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for batch in sorted({r["batch"] for r in enqueue}):
            m, pq, pr = (_by(enqueue, side=s, batch=batch) or {} for s in harness.SIDES)
            out.append(
                f"| {batch} | {m.get('jobs_per_s')} | {pq.get('jobs_per_s')} "
                f"| {pr.get('jobs_per_s')} | {_ratio(m.get('jobs_per_s'), pq.get('jobs_per_s'))} "
                f"| {_ratio(m.get('jobs_per_s'), pr.get('jobs_per_s'))} "
                f"| {m.get('commits_per_job')} · {pq.get('commits_per_job')} · "
                f"{pr.get('commits_per_job')} |"
            )
            if m and pq:
                targets.append(
                    (f"enqueue ≥ 1.0× pgqueuer at {batch} per call",
                     _ratio(m["jobs_per_s"], pq["jobs_per_s"]),
                     m["jobs_per_s"] >= pq["jobs_per_s"])
                )  # fmt: skip
        out.append("")

    ceiling = doc.get("ceiling")
    if ceiling:
        out.append("## The database's own limit (pgbench, 2 clients, claim + complete)\n")
        out.append(
            "| batch | ceiling, complete per job (jobs/s) | ceiling, complete per batch (jobs/s) "
            "| menos drain (jobs/s) | menos ÷ per-job ceiling | menos ÷ per-batch ceiling |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|")
        for batch in sorted({r["batch"] for r in ceiling}):
            one = _by(ceiling, batch=batch, complete="per-job") or {}
            many = _by(ceiling, batch=batch, complete="batched") or {}
            m = _by(drain or [], side="menos", batch=batch) or {}
            mj = m.get("jobs_per_s")
            frac_one = f"{100 * mj / one['jobs_per_s']:.0f} %" if mj and one else "-"
            frac_many = f"{100 * mj / many['jobs_per_s']:.0f} %" if mj and many else "-"
            out.append(
                f"| {batch} | {one.get('jobs_per_s')} | {many.get('jobs_per_s')} | {mj} "
                f"| {frac_one} | {frac_many} |"
            )
            # menos completes a claim's jobs in one statement and one commit, as the per-batch
            # script does: that is its limit (it outruns the per-job one several times over).
            if batch == 10 and mj and many:
                targets.append(
                    ("≥ 25 % of the database's claim+complete limit at batch 10 (per-batch)",
                     frac_many, mj >= 0.25 * many["jobs_per_s"])
                )  # fmt: skip
        out.append("")

    pipeline = doc.get("pipeline")
    if pipeline:
        out.append(
            "## Real pipeline: bin/worker, 1 KB markdown, builtin analyzer, callbacks on "
            "(bin/dispatcher to a receiver on 127.0.0.1)\n"
        )
        out.append(
            "| workers × slots | jobs/s | statements/job | commits/job | writing transactions/job "
            "| claims/job | CPU ms/job: workers · postgres · dispatcher · receiver | failed "
            "| callbacks delivered |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in pipeline:
            claims = _claims_per_job(row)
            out.append(
                f"| {row['workers']} × {row['slots_per_worker']} | {row['jobs_per_s']} "
                f"| {row['statements_per_job']} | {row['commits_per_job']} "
                f"| {row.get('writing_transactions_per_job', '-')} "
                f"| {claims if claims is not None else '-'} | {_cpu(row)} | {row['failed']} "
                f"| {row['callbacks_delivered']}/{row['jobs']} |"
            )
        if any("writing_transactions_per_job" in row for row in pipeline):
            out.append(
                "\ncommits/job is pg_stat_database's count: read-only transactions too, mostly"
                " the one a LISTENing backend runs to read each NOTIFY. writing transactions/job"
                " counts the transaction ids the server assigned (server-wide, the benchmark's"
                " own fill taken out): about the transactions that wrote."
            )
        two = _by(pipeline, workers=2)
        if two:
            # a job that failed or whose callback never arrived is no pipeline throughput
            short = pipeline_failure([two])
            targets.append(
                ("pipeline ≥ 200 jobs/s with 2 workers on 2 cores",
                 f"{two['jobs_per_s']} jobs/s" + (f" ({short})" if short else ""),
                 two["jobs_per_s"] >= 200 and not short)
            )  # fmt: skip
            out.append("\nStatements per job with 2 workers (pg_stat_statements, top level):\n")
            out.append("| per job | ms/call | statement |")
            out.append("|---:|---:|---|")
            for statement in two["top_statements"][:10]:
                query = statement["query"].replace("|", "\\|")[:110]
                out.append(f"| {statement['per_job']} | {statement['ms_per_call']} | `{query}` |")
        out.append("")

    latency = doc.get("latency")
    if latency:
        out.append(
            "## Idle pickup latency, enqueue commit → job start, 50 jobs/s, 2 consumers, NOTIFY\n"
        )
        out.append("| consumer | p50 ms | p95 ms | p99 ms | max ms | started/sent |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for row in latency:
            out.append(
                f"| {row['side']} | {row['p50']} | {row['p95']} | {row['p99']} | {row['max']} "
                f"| {row['started']}/{row['sent']} |"
            )
        m = _by(latency, side="menos")
        pq = _by(latency, side="pgqueuer")
        if m and pq:
            # percentiles of the jobs that started say nothing of those that never did
            whole = all(row["started"] == row["sent"] for row in (m, pq))
            targets.append(
                ("pickup p99 no worse than pgqueuer's",
                 f"{m['p99']} ms vs {pq['p99']} ms" + ("" if whole else " (jobs not started)"),
                 whole and m["p99"] <= pq["p99"])
            )  # fmt: skip
        out.append("")

    http = doc.get("http")
    if http:
        out.append("## HTTP ingest: POST /api/v1/ingest against one bin/api\n")
        out.append(
            "| tool | connections | req/s | p50 ms | p90 ms | p99 ms | non-2xx | jobs created |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        out.append(
            f"| {http['tool']} | {http['connections']} | {http['requests_per_s']} "
            f"| {http.get('p50_ms')} | {http.get('p90_ms')} | {http.get('p99_ms')} "
            f"| {http.get('non_2xx')} | {http.get('jobs_created')} |"
        )
        rps, p99 = http.get("requests_per_s") or 0, http.get("p99_ms") or 1e9
        refused = http.get("non_2xx") or 0  # a refused request is no ingest, however fast
        unanswered = socket_errors(http)  # nor is one never answered, and no latency has it
        lost = f", {unanswered} unanswered" if unanswered else ""
        measured = f"{rps} req/s" + (f", {refused} not 2xx" if refused else "") + lost
        targets.append(
            ("HTTP ingest ≥ 1,000 req/s", measured, rps >= 1000 and not refused and not unanswered)
        )
        targets.append(("HTTP ingest p99 ≤ 50 ms", f"{p99} ms{lost}", p99 <= 50 and not unanswered))
        out.append("")

    scale = doc.get("scale")
    if scale:
        rows = scale["finished_rows"]
        out.append(f"## Scale: menos drain with {rows:,} finished jobs already in the table\n")
        paired = any("ratio" in row for row in scale["drains"])
        out.append(
            "Each round drains an empty table, then the full one; the ratio is the median of "
            "the rounds' ratios.\n"
            if paired
            else "The ratio is the full table's median round over the empty table's.\n"
        )
        out.append(
            "| batch | empty table jobs/s | with finished rows jobs/s | ratio (≥ 0.90) "
            "| each round's ratio | WAL bytes/job empty · full "
            "| full-page images/job empty · full |"
        )
        out.append("|---:|---:|---:|---:|---|---:|---:|")
        for row in scale["drains"]:
            empty = row["empty"]
            ej = empty["jobs_per_s"]
            # Older results have no paired ratio: the ratio of the two medians stands in.
            ratio = row["ratio"] if "ratio" in row else (row["jobs_per_s"] / ej if ej else None)
            each = " · ".join(f"{r:.3f}×" for r in row.get("ratio_rounds", []))
            shown = "-" if ratio is None else f"{ratio:.3f}×"  # 0.895 must not read as 0.90
            out.append(
                f"| {row['batch']} | {ej} | {row['jobs_per_s']} | {shown} | {each or '-'} "
                f"| {empty.get('wal_bytes_per_job')} · {row.get('wal_bytes_per_job')} "
                f"| {empty.get('wal_fpi_per_job')} · {row.get('wal_fpi_per_job')} |"
            )
            if ratio is not None:
                targets.append(
                    (f"scale ≥ 90 % of empty table at batch {row['batch']}", shown, ratio >= 0.9)
                )
        out.append("")

    diagnose = doc.get("diagnose")
    if diagnose:
        out.append(
            "## Diagnostics: the same measurement with one thing changed (not menos today)\n"
        )
        out.append(
            "| measurement | jobs/s (median) | vs as-is | each round | commits/job "
            "| statements/job | claims/job |"
        )
        out.append("|---|---:|---:|---|---:|---:|---:|")
        base: dict[str, float] = {}
        for row in diagnose:
            kind = "pipeline" if "workers" in row and isinstance(row["workers"], int) else "drain"
            base.setdefault(kind, row["jobs_per_s"])
            claims = _claims_per_job(row)
            out.append(
                f"| {row['what']} | {row['jobs_per_s']} | {_ratio(row['jobs_per_s'], base[kind])} "
                f"| {' · '.join(str(x) for x in row.get('rounds', []))} "
                f"| {row['commits_per_job']} | {row['statements_per_job']} "
                f"| {claims if claims is not None else '-'} |"
            )
        out.append("")

    if targets:
        out.append("## Targets\n")
        out.append("| target | measured | verdict |")
        out.append("|---|---|---|")
        for what, measured, ok in targets:
            out.append(f"| {what} | {measured} | {_verdict(ok)} |")
        out.append("")
    return "\n".join(out) + "\n"


def claimed_at(worker_log: str, titles: dict[str, int]) -> dict[int, float]:
    """When each job's `job_claimed` line was logged (Unix seconds), keyed by the pacer's seq."""
    found: dict[int, float] = {}
    for line in worker_log.splitlines():
        if '"job_claimed"' not in line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        seq = titles.get(str(entry.get("job_id")))
        if seq is not None:
            at = dt.datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))
            found.setdefault(seq, at.timestamp())
    return found

"""The benchmark's figures and verdicts: percentiles, and targets that a failed run cannot meet."""

from __future__ import annotations

from typing import Any

from bench import harness, report


def _document(**sections: Any) -> dict[str, Any]:
    return {
        "at": "20261127T205541Z",
        "mode": "quick",
        "total_seconds": 1.0,
        "machine": {"cpus": 2, "python": "3.11", "postgres": "embedded"},
        "versions": {},
        **sections,
    }


def test_nearest_rank_percentiles() -> None:
    """ceil(p/100 · n): neither one rank high when p/100 · n is odd, nor off between ranks."""
    assert harness.percentiles(list(range(1, 101)), (50, 95, 99)) == {
        "p50": 50,
        "p95": 95,
        "p99": 99,
    }
    assert harness.percentiles(list(range(1, 1501)), (50, 95, 99)) == {
        "p50": 750,
        "p95": 1425,
        "p99": 1485,
    }
    assert harness.percentiles([3.0, 1.0, 2.0], (50, 99)) == {"p50": 2.0, "p99": 3.0}
    assert harness.percentiles(list(range(1, 11)), (50, 90)) == {"p50": 5, "p90": 9}


def _http(**figures: Any) -> dict[str, Any]:
    return _document(http={"tool": "wrk", "connections": 16, "p99_ms": 20.0, **figures})


def test_refused_requests_are_not_ingest_throughput() -> None:
    """Every request answered 500 at 1 024 req/s: the target is missed and the run fails."""
    refused = {"requests_per_s": 1024.5, "requests": 4112, "non_2xx": 4112, "jobs_created": 0}
    table = report.markdown(_http(**refused))
    assert "| HTTP ingest ≥ 1,000 req/s | 1024.5 req/s, 4112 not 2xx | **missed** |" in table
    assert report.http_failure(refused) == "4112 of 4112 ingest requests were not 2xx"


def test_accepted_requests_meet_the_http_target() -> None:
    accepted = {"requests_per_s": 1435.8, "requests": 28716, "non_2xx": 0, "jobs_created": 32160}
    table = report.markdown(_http(**accepted))
    assert "| HTTP ingest ≥ 1,000 req/s | 1435.8 req/s | met |" in table
    assert report.http_failure(accepted) is None


def test_the_ceiling_target_uses_the_per_batch_ceiling() -> None:
    """menos completes a claim in one commit: 3 506 jobs/s of an 18 366 limit is 19 %, missed."""
    table = report.markdown(
        _document(
            drain=[{"side": "menos", "batch": 10, "jobs_per_s": 3506.0}],
            ceiling=[
                {"batch": 10, "complete": "per-job", "jobs_per_s": 4465.5},
                {"batch": 10, "complete": "batched", "jobs_per_s": 18366.0},
            ],
        )
    )
    assert (
        "| ≥ 25 % of the database's claim+complete limit at batch 10 (per-batch) | 19 % "
        "| **missed** |" in table
    )


def _latency(menos_started: int) -> dict[str, Any]:
    row = {"sent": 200, "p50": 1.0, "p95": 1.5, "p99": 2.0, "max": 4.0}
    return _document(
        latency=[
            {**row, "side": "menos", "started": menos_started},
            {**row, "side": "pgqueuer", "started": 200, "p99": 9.4},
        ]
    )


def test_jobs_that_never_started_miss_the_pickup_target() -> None:
    """Half of menos's jobs never started: its p99 over the other half is no pass."""
    table = report.markdown(_latency(100))
    assert "| pickup p99 no worse than pgqueuer's | 2.0 ms vs 9.4 ms (jobs not started) " in table
    assert "**missed**" in table


def test_every_job_started_meets_the_pickup_target() -> None:
    table = report.markdown(_latency(200))
    assert "| pickup p99 no worse than pgqueuer's | 2.0 ms vs 9.4 ms | met |" in table


def test_requests_wrk_gave_up_on_miss_the_http_targets() -> None:
    """wrk counts a timed-out request in neither its rate nor its percentiles: 16 requests
    left unanswered for 2 s, p99 2.4 ms, is no pass and fails the run."""
    out = (
        "  Latency Distribution\n     50%   98.00us\n     75%  132.00us\n     90%  253.00us\n"
        "     99%    2.41ms\n  6384 requests in 4.01s, 486.28KB read\n"
        "  Socket errors: connect 0, read 0, write 0, timeout 16\nRequests/sec:   1592.15\n"
    )
    result = report.parse_wrk(out, threads=2, connections=16)
    table = report.markdown(_http(**{**result, "jobs_created": 6384}))
    assert "| HTTP ingest ≥ 1,000 req/s | 1592.15 req/s, 16 unanswered | **missed** |" in table
    assert "| HTTP ingest p99 ≤ 50 ms | 2.41 ms, 16 unanswered | **missed** |" in table
    assert report.http_failure(result) == (
        "ingest requests got no answer: socket errors connect 0, read 0, write 0, timeout 16"
    )


def _pipeline(delivered: int, failed: int = 0) -> dict[str, Any]:
    row = {
        "workers": 2, "slots_per_worker": 4, "callbacks": True, "jobs": 300, "failed": failed,
        "jobs_per_s": 341.7, "statements_per_job": 1.6, "commits_per_job": 2.4,
        "callbacks_delivered": delivered, "top_statements": [],
    }  # fmt: skip
    return _document(pipeline=[row])


def test_undelivered_callbacks_miss_the_pipeline_target() -> None:
    """A dispatcher that delivered nothing: the jobs' rate alone is no pass, and the run fails."""
    table = report.markdown(_pipeline(delivered=0))
    assert (
        "| pipeline ≥ 200 jobs/s with 2 workers on 2 cores | 341.7 jobs/s "
        "(2 workers: 0 failed, 0/300 callbacks delivered) | **missed** |" in table
    )
    assert report.pipeline_failure(_pipeline(delivered=0)["pipeline"]) is not None


def test_delivered_callbacks_meet_the_pipeline_target() -> None:
    table = report.markdown(_pipeline(delivered=300))
    assert "| pipeline ≥ 200 jobs/s with 2 workers on 2 cores | 341.7 jobs/s | met |" in table
    assert report.pipeline_failure(_pipeline(delivered=300)["pipeline"]) is None

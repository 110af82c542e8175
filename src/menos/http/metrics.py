"""Prometheus exposition at /metrics: queue figures read from the database, HTTP figures of
this API process, stage durations and deliveries flushed by every worker and dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from litestar import Request, Response, get
from litestar.enums import MediaType, ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector

from menos import errors
from menos.http import shared_read
from menos.queue import repository, stats

# Litestar appends `; charset=utf-8` to a text type: one more here would be sent twice,
# which strict parsers (Prometheus 3) refuse.
CONTENT_TYPE = "text/plain; version=0.0.4"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CLIENT_GONE = 499  # the status counted for a request its client left before it was answered

log = structlog.get_logger("menos.http")

# A `<name>_created` gauge beside each counter and histogram (its creation time) is in no
# documented series and Prometheus does not read it from this text format.
disable_created_metrics()  # type: ignore[no-untyped-call]


class HttpMetrics:
    """Request counts and latencies of this API process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "menos_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "menos_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap the app: time every HTTP request and count it by route template and status.
        A request whose client went away before it was answered (an abandoned upload) is
        counted as `499`, as nginx does, not as the `500` the app then answers nobody."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status: int | None = None
            gone = False

            async def watch(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            async def heard() -> ReceiveMessage:
                nonlocal gone
                message = await receive()
                gone = gone or (message["type"] == "http.disconnect" and status is None)
                return message

            try:
                await app(scope, heard, watch)
            finally:
                code = CLIENT_GONE if gone else status or 500
                route = str(scope.get("path_template") or "unmatched")
                method = str(scope.get("method", ""))
                method = method if method in _METHODS else "other"  # any token is one
                self.requests.labels(method, route, str(code)).inc()
                self.latency.labels(method, route).observe(time.perf_counter() - started)

        return timed


class _QueueCollector(Collector):
    """Figures read from the database for the scrape that renders them."""

    def __init__(
        self, counts: list[repository.StatusCount], totals: list[repository.MetricTotal]
    ) -> None:
        self._counts = counts
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("menos_jobs", "Jobs per status", labels=["status"])
        for row in self._counts:
            jobs.add_metric([row.status], row.jobs)
        yield jobs
        pending = next((r for r in self._counts if r.status == "pending"), None)
        yield GaugeMetricFamily(
            "menos_queue_depth", "Jobs waiting to be claimed", value=pending.jobs if pending else 0
        )
        yield GaugeMetricFamily(
            "menos_oldest_pending_age_seconds",
            "Age of the oldest pending job",
            value=(pending.oldest_age_s or 0.0) if pending else 0.0,
        )
        yield from self._stage_histogram()
        deliveries = CounterMetricFamily(
            "menos_callback_deliveries",
            "Callback delivery attempts by outcome",
            labels=["outcome"],
        )
        for total in self._totals:
            if total.name == stats.DELIVERIES:
                deliveries.add_metric([_labels(total.labels)["outcome"]], total.value)
        yield deliveries

    def _stage_histogram(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "menos_stage_duration_seconds", "Pipeline stage durations", labels=["stage"]
        )
        per_stage: dict[str, dict[str, Any]] = {}
        for total in self._totals:
            if not total.name.startswith(stats.STAGE_HISTOGRAM):
                continue
            labels = _labels(total.labels)
            entry = per_stage.setdefault(labels["stage"], {"buckets": {}, "sum": 0.0})
            if total.name.endswith("_bucket"):
                entry["buckets"][float(labels["le"])] = total.value
            elif total.name.endswith("_sum"):
                entry["sum"] = total.value
            else:
                entry["count"] = total.value
        for stage, entry in sorted(per_stage.items()):
            buckets = [(str(le), value) for le, value in sorted(entry["buckets"].items())]
            buckets.append(("+Inf", entry.get("count", 0.0)))
            family.add_metric([stage], buckets, sum_value=entry["sum"])
        yield family


def _labels(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


QueueFigures = tuple[list[repository.StatusCount], list[repository.MetricTotal]]


async def _read_queue(repo: repository.Repository) -> QueueFigures:
    return await repo.active_status_counts(), await repo.metric_totals()


def queue_read() -> shared_read.SharedRead[QueueFigures]:
    """The database read behind a scrape, shared by the scrapes that come while it runs:
    active jobs and the flushed metrics, whose cost does not grow with the finished jobs."""
    return shared_read.SharedRead(_read_queue)


class FinishedCounts:
    """Completed, failed and cancelled jobs for the scrapes. Counting them reads the whole
    table (about 250 ms for a million jobs), so a count is taken again only once `SPACING`
    times the last one's duration has passed; a scrape meanwhile, or one the count does not
    answer within the read's timeout, gets the last count. On a small table every scrape
    counts; on a large one a count is under way at most 1/`SPACING` of the time."""

    SPACING = 20.0

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = shared_read.TIMEOUT_S,
    ) -> None:
        self._clock = clock
        self._read = shared_read.SharedRead(self._count, timeout_s=timeout_s)
        self._last: list[repository.StatusCount] | None = None
        self._next_at = -math.inf

    async def latest(self, repo: repository.Repository) -> list[repository.StatusCount] | None:
        """The latest count, taken now when one is due; None until a first one has answered."""
        if self._clock() >= self._next_at:
            with contextlib.suppress(errors.DatabaseUnavailable):  # the last count stands
                await self._read.result(repo)
        return self._last

    async def close(self) -> None:
        """Stop a count still running at shutdown."""
        await self._read.close()

    async def _count(self, repo: repository.Repository) -> list[repository.StatusCount]:
        began = self._clock()
        measured = True
        try:
            self._last = await repo.finished_status_counts()
        except errors.DatabaseUnavailable as exc:
            # Also a count the server gave up on (the API's statement timeout): spaced out
            # as well, so that a table too large to count is not read again at every scrape.
            log.warning("metrics_finished_count_failed", error=str(exc))
            # But no answer at all in time (the database away or frozen) says nothing of the
            # table's size: the next scrape counts again, not 20 times the wait later.
            measured = not isinstance(exc.__cause__, TimeoutError)
            raise
        finally:
            ended = self._clock()
            self._next_at = ended + (self.SPACING * (ended - began) if measured else 0.0)
        return self._last


# The schema says what the answer is: Prometheus text, not the JSON Litestar would assume.
@get("/metrics", include_in_schema=True, security=[{}], media_type=MediaType.TEXT)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition (no auth: restrict it at the network edge)."""
    repo: repository.Repository = request.app.state.repo
    http: HttpMetrics = request.app.state.http_metrics
    queue_read: shared_read.SharedRead[QueueFigures] = request.app.state.queue_read
    finished: FinishedCounts = request.app.state.finished_counts
    registry = CollectorRegistry()
    # As exporters do, a database out of reach (or too slow to answer in time) still gives a
    # scrape: `menos_database_up 0` and what this process knows, so an alert tells the two apart.
    up = Gauge("menos_database_up", "Whether the database answered", registry=registry)
    counting = asyncio.ensure_future(finished.latest(repo))  # side by side with the read below
    try:
        active, totals = await queue_read.result(repo)
        counted = await counting
        registry.register(_QueueCollector([*active, *(counted or [])], totals))
        up.set(1)
    except errors.DatabaseUnavailable as exc:  # any other fault stays a 500
        log.warning("metrics_database_unavailable", error=str(exc))
        up.set(0)
    finally:
        counting.cancel()  # ended already, unless the read above failed first
        await asyncio.gather(counting, return_exceptions=True)
    body = generate_latest(registry) + generate_latest(http.registry)
    return Response(body, media_type=CONTENT_TYPE)

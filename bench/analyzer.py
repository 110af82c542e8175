"""CPU ms per call of the builtin analyzer for a 1 KB note, a 10 KB note and a 100 KB text."""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time

import msgspec

from bench import run
from menos import markdown
from menos.pipeline import analyzers, stages
from menos.pipeline.analyzers import builtin

SEED = 20240601
HEADINGS = (
    "Why the queue lives in the database",
    "Claiming work",
    "Leases and rescues",
    "Callbacks and the outbox",
    "Measuring throughput",
    "Operating it day to day",
    "What we would change",
)
SENTENCES = (
    "A job queue on PostgreSQL keeps the jobs next to the data they change.",
    "Each worker claims a batch of pending rows with FOR UPDATE SKIP LOCKED.",
    "Two workers never receive the same job, and nobody waits on a lock held by another worker.",
    "The lease tells the rescuer when a silent worker should lose its job.",
    "When a worker dies, the rescuer returns its jobs to the pending state.",
    "Every state change and its outbox row commit in one transaction.",
    "The dispatcher reads the outbox and delivers signed webhooks to the callback URL.",
    "Retries back off exponentially so that a slow receiver is not flooded.",
    "Martin Kleppmann describes these trade-offs in Designing Data-Intensive Applications.",
    "The Apache Software Foundation hosts several brokers that solve the same problem differently.",
    "Batching claims amortizes the write-ahead log flush over many jobs.",
    "Throughput grows with the batch size until the CPU becomes the limit.",
    "Indexes on the pending rows keep the claim cheap even with millions of finished jobs.",
    "Finished rows stay queryable with plain SQL for dashboards and audits.",
    "LISTEN and NOTIFY wake idle workers without polling the table.",
    "A summary, a handful of tags and a quality tier are stored with every note.",
    "The builtin analyzer works offline and gives the same answer every time.",
    "Operators watch the queue depth, the oldest pending job and the failure rate.",
    "Vacuum keeps the table small when completed jobs are purged every night.",
    "Measure before tuning: count statements and commits per job and profile the worker.",
    "Compare against the database's own limit before blaming the queue.",
    "Most teams start with Redis or RabbitMQ and only later notice what they gave up.",
    "A single database means a single backup, a single failover and a single set of credentials.",
    "Large transcripts from YouTube videos are cut into chunks before they are analyzed.",
    "Web pages are fetched once, stripped of navigation and stored as plain text.",
    "The owner's most used tags are offered first, so the vocabulary stays small and consistent.",
)
# Sentences are also assembled from these parts, so long texts do not just repeat SENTENCES.
SUBJECTS = (
    "The worker",
    "Each consumer",
    "A careful operator",
    "The rescuer",
    "Our dispatcher",
    "The storage engine",
    "A nightly purge",
    "The ingest service",
    "The web fetcher",
    "A transcript parser",
    "The quality score",
    "The tag vocabulary",
    "An idle replica",
    "The connection pool",
    "A slow webhook receiver",
    "The advisory lock",
    "Every migration",
    "The embedded server",
    "A batch of claims",
    "The query planner",
)
VERBS = (
    "quietly reduces",
    "rarely touches",
    "measures",
    "keeps track of",
    "depends on",
    "competes for",
    "invalidates",
    "records",
    "throttles",
    "compresses",
    "retries",
    "schedules",
    "inspects",
    "summarizes",
    "protects",
    "duplicates",
    "exposes",
    "ignores",
)
OBJECTS = (
    "the pending rows",
    "stale leases",
    "the write-ahead log",
    "expired sessions",
    "the callback outbox",
    "long transcripts",
    "markdown headings",
    "the latency histogram",
    "duplicate submissions",
    "foreign keys",
    "the autovacuum daemon",
    "partial indexes",
    "signed payloads",
    "network timeouts",
    "private addresses",
    "frontmatter metadata",
    "the retention window",
    "noisy neighbours",
    "checkpoint spikes",
    "unused tags",
)
TAILS = (
    "during a rolling deploy",
    "when the disk is slow",
    "before the nightly backup",
    "under heavy load",
    "on a shared virtual machine",
    "after a failover",
    "without any extra configuration",
    "for every owner separately",
    "in the same transaction",
    "while the queue drains",
    "once the lease expires",
    "as the documentation explains",
)
LIST_ITEMS = (
    "Claims are one statement with a lease.",
    "Every write after a claim is guarded by the worker id and the attempt count.",
    "Callbacks are retried three times with a growing delay.",
    "Purges run on one node, chosen by an advisory lock.",
    "Time is a parameter, so tests never sleep.",
)


def note_1kb() -> tuple[str, str]:
    """The pipeline benchmark's 1 KB markdown note as the analyzer sees it, and its title."""
    text = stages.normalize_whitespace(markdown.parse(run.MARKDOWN_1KB).text)
    return text, "note 1"


def sentence(rng: random.Random) -> str:
    """One of SENTENCES a third of the time, else a sentence assembled from parts."""
    if rng.random() < 1 / 3:
        return rng.choice(SENTENCES)
    parts = (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS))
    return " ".join(parts) + "."


def generated(size: int, *, structured: bool) -> str:
    """Deterministic English-ish text of about `size` characters, with markdown when structured."""
    rng = random.Random(SEED + size)
    blocks: list[str] = []
    length = 0
    while length < size:
        if structured and len(blocks) % 5 == 0:
            blocks.append("## " + rng.choice(HEADINGS))
        elif structured and len(blocks) % 7 == 3:
            blocks.append("\n".join("- " + item for item in rng.sample(LIST_ITEMS, 3)))
        else:
            blocks.append(" ".join(sentence(rng) for _ in range(rng.randint(3, 6))))
        length += len(blocks[-1]) + 2
    return "\n\n".join(blocks)[:size].rsplit(" ", 1)[0]


def cases() -> list[tuple[str, str, str | None, int]]:
    """(label, text, title, calls) for each measured size."""
    text, title = note_1kb()
    return [
        ("1 KB note", text, title, 300),
        ("10 KB note", generated(10_000, structured=True), "Queue handbook", 60),
        ("100 KB text", generated(100_000, structured=False), None, 8),
    ]


def request(text: str, title: str | None) -> analyzers.Request:
    return analyzers.Request(
        text=text, title=title, content_type="markdown", tags=[], vocabulary=["postgres", "queues"]
    )


def measure(analyzer: builtin.BuiltinAnalyzer, req: analyzers.Request, calls: int) -> list[float]:
    """CPU milliseconds of each call (after one warm-up call)."""
    analyzer.analyze_text(req)
    spent: list[float] = []
    for _ in range(calls):
        # Every real note brings new words: a pattern compiled per word must not come from
        # the cache that the previous call of the same text filled.
        re.purge()
        start = time.process_time_ns()
        analyzer.analyze_text(req)
        spent.append((time.process_time_ns() - start) / 1e6)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analyzer", description=__doc__)
    parser.add_argument("--repeat", type=float, default=1.0, help="scale the number of calls")
    parser.add_argument("--show", action="store_true", help="print the result for each text")
    args = parser.parse_args(argv)
    analyzer = builtin.BuiltinAnalyzer()
    print(f"{'text':<12} {'chars':>7} {'calls':>6} {'median ms':>10} {'min ms':>8}")
    for label, text, title, calls in cases():
        req = request(text, title)
        spent = measure(analyzer, req, max(1, round(calls * args.repeat)))
        print(
            f"{label:<12} {len(text):>7} {len(spent):>6} "
            f"{statistics.median(spent):>10.2f} {min(spent):>8.2f}"
        )
        if args.show:
            shown = analyzer.analyze_text(req)
            for key in ("summary", "tags", "topics", "entities", "quality_score"):
                print(f"  {key}: {msgspec.json.encode(shown[key]).decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

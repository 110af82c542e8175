"""Operator commands over the repository: reprocess, classify, export, jobs, purge."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import errno
import io
import json
import os
import re
import stat
import sys
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import msgspec
import structlog
import yaml
from tqdm import tqdm

from menos import errors
from menos.pipeline import resource_keys, ssrf
from menos.queue import maintenance, models, notify, repository

log = structlog.get_logger("menos.tools")

STAGES = ("fetch", "prepare", "analyze", "parse", "persist")
EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 2
# While the database is away, `follow` waits twice as long before each read, up to this.
FOLLOW_RETRY_CAP_S = 10.0
_SLUG = re.compile(r"[^a-z0-9]+")


def check_target(target: str) -> None:
    """InvalidInput unless `target` is a content id or a URL menos can identify."""
    try:
        uuid.UUID(target)
    except ValueError:
        if "://" not in target:
            raise errors.InvalidInput(
                "CONTENT_ID|URL", f"neither a content id nor a URL: {target!r}"
            ) from None
        resource_keys.identify(target)


async def resolve_content(
    repo: repository.Repository, target: str, owner: str | None
) -> models.Content:
    """The content a CONTENT_ID or URL names; errors when unknown or ambiguous."""
    try:
        content_id = uuid.UUID(target)
    except ValueError:
        key = resource_keys.identify(target).resource_key
        found = await repo.contents_by_resource_key(key, owner=owner)
        if not found:
            raise errors.NotFound(f"no content for {target} ({key})") from None
        if len(found) > 1:
            owners = ", ".join(sorted(c.owner for c in found))
            raise errors.InvalidInput(
                "--owner", f"{target} is known to several owners: {owners}"
            ) from None
        return found[0]
    content = await repo.content(content_id, owner=owner)
    if content is None:
        raise errors.NotFound(f"no content {content_id}")
    return content


async def reprocess(
    repo: repository.Repository,
    target: str,
    *,
    owner: str | None,
    force: bool,
    wait: bool,
    callback_url: str | None,
    version: str,
    data_tier: models.DataTier,
    allow_private: bool,
    out: TextIO,
) -> int:
    """Re-run one item by the API's rules; with `wait`, follow it and exit 0/1/2."""
    content = await resolve_content(repo, target, owner)
    if callback_url is not None:  # well-formed: the command line checked that
        await ssrf.resolve_checked(
            callback_url, allow_private=allow_private, field="--callback-url"
        )
    outcome = await repo.reprocess(
        content.content_id,
        owner=None,
        force=force,
        pipeline_version=version,
        callback_url=callback_url,
        data_tier=data_tier,
        transcript=None,
        actor=repository.Actor(None, {"via": "bin/reprocess"}),
    )
    assert outcome is not None
    print(
        json.dumps(
            {
                "job_id": str(outcome.job_id) if outcome.job_id else None,
                "content_id": str(content.content_id),
                "status": outcome.status,
            }
        ),
        file=out,
        flush=True,
    )
    if not wait or outcome.job_id is None:
        return EXIT_OK
    return await follow(repo, outcome.job_id)


async def follow(repo: repository.Repository, job_id: uuid.UUID, poll_s: float = 0.25) -> int:
    """Show a job's stage progress on stderr until it ends; its exit code (0/1/2). On a
    terminal as a progress bar; elsewhere (a log file, a pipe) as a `job_progress` log line
    at each change, so that stderr holds whole lines (log lines, and a failure's message)."""
    bar = tqdm(
        total=len(STAGES),
        desc="pending",
        unit="stage",
        file=sys.stderr,
        bar_format="{desc:<22} {bar} {n_fmt}/{total_fmt} stages [{elapsed}]",
        disable=not sys.stderr.isatty(),
    )
    shown: tuple[str, str | None, int] | None = None
    outage = notify.Backoff(
        poll_s,
        failed="wait_database_unavailable",
        recovered="wait_database_available",
        cap_s=FOLLOW_RETRY_CAP_S,
    )
    try:
        while True:
            try:
                job = await repo.job(job_id, owner=None)
            except errors.DatabaseUnavailable as exc:
                # The job goes on without us (a restart, a freeze): wait for the database
                # rather than exit 1, which says the job failed.
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.succeeded()
            if job is None:
                raise errors.NotFound(f"job {job_id} disappeared")
            # A stage that failed ended without being done, and persist is done only when the
            # job completed (cancelled during it, the job ended without its result).
            undone = (job.error_stage if job.status == "failed" else None, "persist")
            done = len(
                [s for s in job.stages if s.finished_at is not None and s.name not in undone]
            )
            if job.status == "completed":
                done = len(STAGES)
            bar.n = done
            bar.set_description_str(
                f"{job.status}: {job.current_stage}"
                if job.status == "processing" and job.current_stage
                else job.status
            )
            bar.refresh()
            if bar.disable and shown != (job.status, job.current_stage, done):
                shown = (job.status, job.current_stage, done)
                log.info(
                    "job_progress",
                    job_id=str(job_id),
                    status=job.status,
                    stage=job.current_stage,
                    stages_done=done,
                    stages=len(STAGES),
                )
            match job.status:
                case "completed":
                    return EXIT_OK
                case "failed":
                    bar.write(
                        f"menos: job {job_id} failed in {job.error_stage}: {job.error_code}:"
                        f" {job.error_message}",
                        file=sys.stderr,
                    )
                    return EXIT_FAILED
                case "cancelled":
                    return EXIT_CANCELLED
            await asyncio.sleep(poll_s)
    finally:
        bar.close()


async def classify(
    repo: repository.Repository,
    *,
    owner: str | None,
    content_type: str | None,
    status: str | None,
    stale: bool,
    limit: int | None,
    dry_run: bool,
    version: str,
    data_tier: models.DataTier,
    out: TextIO,
) -> int:
    """Enqueue re-runs for pending, failed or stale content; never a second active job."""
    submitted = skipped = seen = 0
    after: uuid.UUID | None = None
    bar = tqdm(
        desc="classify", unit="item", file=sys.stderr, total=limit, disable=not sys.stderr.isatty()
    )
    try:
        while limit is None or seen < limit:
            batch = await repo.classify_candidates(
                owner=owner,
                content_type=content_type,
                status=status,
                stale=stale,
                pipeline_version=version,
                after=after,
                limit=min(200, limit - seen) if limit else 200,
            )
            if not batch:
                break
            for content_id, _, current in batch:
                seen += 1
                after = content_id
                if dry_run and not bar.disable:
                    # On a terminal the id would land on the bar's line: it is cleared for it.
                    bar.write(str(content_id), file=out)
                elif dry_run:
                    print(str(content_id), file=out)
                else:
                    # Forced only when it was current as listed (`--status completed`): a
                    # stale, failed or pending item needs no force, and one that a reprocess
                    # made current since it was listed is then skipped, not run again.
                    outcome = await repo.reprocess(
                        content_id,
                        owner=None,
                        force=stale and current,
                        pipeline_version=version,
                        callback_url=None,
                        data_tier=data_tier,
                        transcript=None,
                        actor=repository.Actor(None, {"via": "bin/classify"}),
                    )
                    if outcome is not None and outcome.status == "submitted":
                        submitted += 1
                    else:
                        skipped += 1
                bar.update(1)
        # The bar's total was the limit, an upper bound: fewer candidates end it at 100 %.
        bar.total = seen
        bar.refresh()
    finally:
        bar.close()
    summary = {"candidates": seen, "submitted": submitted, "skipped": skipped, "dry_run": dry_run}
    print(json.dumps(summary), file=sys.stderr if dry_run else out)
    return EXIT_OK


async def _completed(
    repo: repository.Repository, owner: str | None, content_id: uuid.UUID | None
) -> AsyncIterator[models.Content]:
    """The items to export, a page at a time: a large export never holds them all (nor any
    body) in memory."""
    if content_id is not None:
        one = await repo.content(content_id, owner=owner)
        if one is None or one.result is None:
            raise errors.NotFound(f"no completed content {content_id}")
        yield one
        return
    after = None
    while True:
        page = await repo.export_page(owner=owner, after=after, limit=100)
        for item in page.items:
            yield item
        if page.last is None:
            return
        after = page.last


def _record(content: models.Content) -> dict[str, Any]:
    return {
        "content_id": str(content.content_id),
        "owner": content.owner,
        "content_type": content.content_type,
        "title": content.title,
        "source_url": content.source_url,
        "resource_key": content.resource_key,
        "tags": content.tags,
        "pipeline_version": content.pipeline_version,
        "processed_at": rfc3339(content.processed_at),
        "result": content.result,
    }


def rfc3339(when: dt.datetime) -> str:
    """`when` in UTC as the API writes times (`2026-11-29T19:06:46.611892Z`)."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def slug(text: str, limit: int = 60) -> str:
    """A safe file-name stem: ASCII letters, digits and dashes only ("" when none are left)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _SLUG.sub("-", ascii_text.lower()).strip("-")[:limit].strip("-")


# libyaml's writer (PyYAML's C extension) where it is built: 60 against 280 µs an item, most
# of a markdown export's time before it.
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _FrontmatterDumper(_SafeDumper):  # type: ignore[misc,valid-type]
    """safe_dump's rules, except that a string holding a character YAML reads as a line break
    (NEL, U+2028, U+2029) is double-quoted, where it is escaped: PyYAML writes NEL bare in a
    plain or single-quoted scalar, which reads back folded into a space. And a string that
    YAML 1.2 reads as a number is quoted (`_YAML12_NUMBER`)."""


# Text a YAML 1.2 reader (js-yaml, ruamel.yaml, Go's yaml.v3) takes for a number, where
# PyYAML's YAML 1.1 rules see text and write it plain: a title `0o17` read back as 15, `1e3`
# as 1000.0. Quoting more than needed costs nothing.
_YAML12_NUMBER = re.compile(
    r"[-+]?(?:0[oO][0-7_]+|0[xX][0-9a-fA-F_]+|0[bB][01_]+"
    r"|(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9_]+)?"
    r"|\.(?:inf|Inf|INF|nan|NaN|NAN))"
)


def _represent_str(dumper: yaml.representer.SafeRepresenter, data: str) -> yaml.ScalarNode:
    if any(ch in data for ch in "\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    if _YAML12_NUMBER.fullmatch(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_FrontmatterDumper.add_representer(str, _represent_str)


def _one_line(text: str) -> str:
    """`text` as one line of markdown: a title given with a line break (the API keeps it)
    made a heading of its first line only, and the rest the document's text."""
    return " ".join(text.splitlines())


def markdown_document(content: models.Content) -> str:
    """One item as markdown with YAML frontmatter (safe_dump: it parses back to the same data)."""
    result = content.result or {}
    front = {
        "title": content.title,
        "content_id": str(content.content_id),
        "content_type": content.content_type,
        "source_url": content.source_url,
        "owner": content.owner,
        "tags": list(dict.fromkeys([*content.tags, *result.get("tags", [])])),
        "tier": result.get("tier"),
        "quality_score": result.get("quality_score"),
        "pipeline_version": content.pipeline_version,
        "processed_at": rfc3339(content.processed_at),
    }
    lines = [
        "---",
        yaml.dump(front, Dumper=_FrontmatterDumper, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {_one_line(content.title or content.resource_key)}",
        "",
        str(result.get("summary", "")),
    ]
    topics = [t.get("name") for t in result.get("topics", []) if isinstance(t, dict)]
    if topics:
        lines += ["", "## Topics", "", *(f"- {_one_line(str(name))}" for name in topics)]
    return "\n".join(lines) + "\n"


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection"),
# quoted or not. Where `;` separates a spreadsheet's list (Excel in German, French or Dutch),
# it splits the comma-separated file's cells at each `;` too: what follows one is a cell.
_FORMULA_START = re.compile(r'(^|;)("?)(?=[=+\-@\t\r])')


def _cell(text: str) -> str:
    """Submitted text as a CSV cell a spreadsheet shows as text: a `'` before what would
    start a formula, at its start or after any `;`."""
    return _FORMULA_START.sub(r"\1\2'", text)


_CSV_HEADER = [
    "content_id",
    "owner",
    "content_type",
    "title",
    "source_url",
    "tags",
    "tier",
    "quality_score",
    "result_tags",
    "summary",
    "processed_at",
]


def _csv_row(c: models.Content) -> list[Any]:
    r = c.result or {}
    return [
        c.content_id,
        c.owner,
        c.content_type,
        _cell(c.title or ""),
        _cell(c.source_url or ""),
        _cell(";".join(c.tags)),
        r.get("tier", ""),
        r.get("quality_score", ""),
        ";".join(r.get("tags", [])),  # lower-case letters first: never a formula
        _cell(str(r.get("summary", ""))),
        rfc3339(c.processed_at),
    ]


def _write_items(handle: TextIO, fmt: str) -> Callable[[models.Content], None]:
    """A writer of one item at a time in `fmt` (the CSV header is written at once)."""
    if fmt == "csv":
        writer = csv.writer(handle)
        writer.writerow(_CSV_HEADER)

        def write_row(c: models.Content) -> None:
            writer.writerow(_csv_row(c))

        return write_row

    def write_line(c: models.Content) -> None:
        handle.write(json.dumps(_record(c), ensure_ascii=False) + "\n")

    return write_line


async def _then(
    first: models.Content | None, rest: AsyncIterator[models.Content]
) -> AsyncIterator[models.Content]:
    if first is not None:
        yield first
        async for item in rest:
            yield item


async def export(
    repo: repository.Repository,
    *,
    owner: str | None,
    fmt: str,
    out: Path | None,
    content_id: uuid.UUID | None,
    stdout: TextIO,
) -> int:
    """Write completed results as jsonl, csv, or one markdown file per item."""
    pages = _completed(repo, owner, content_id)
    first = await anext(pages, None)  # an unknown --content-id fails before any output
    if isinstance(stdout, io.TextIOWrapper):
        # JSON and CSV text in UTF-8, as --out writes them, whatever the locale's encoding
        # (LANG=de_DE.ISO-8859-1 stopped at the first emoji with a traceback).
        stdout.reconfigure(encoding="utf-8")
    items = _then(first, pages)
    count = 0
    if fmt == "markdown":
        directory = out or Path("export")
        directory.mkdir(parents=True, exist_ok=True)
        remove_left_behind(directory)
        written: set[str] = set()
        async for content in items:
            count += 1
            # The id's last 12 hex digits are random (its first ones are a timestamp); two
            # items whose titles and random digits meet get the whole id.
            # A title without ASCII letters or digits (日本語) is named by its resource key.
            name = slug(content.title or "") or slug(content.resource_key)
            tail = content.content_id.hex[-12:]
            # A note's resource key (`cid:<id>`) holds the id already: its tail once is enough.
            stem = name if name.endswith(f"-{tail}") else f"{name}-{tail}"
            if stem in written:
                stem = f"{name}-{content.content_id.hex}"
            written.add(stem)
            path = directory / f"{stem}.md"
            replace_file(path, markdown_document(content))
            print(str(path), file=stdout)
        log.info("export_finished", items=count, directory=str(directory))
        return EXIT_OK
    with contextlib.ExitStack() as stack:
        handle = stdout if out is None else stack.enter_context(_export_file(out))
        write = _write_items(handle, fmt)
        async for content in items:
            write(content)
            count += 1
    log.info("export_finished", items=count, format=fmt)
    return EXIT_OK


# Only what an export's replace_file leaves: `.<stem>.md.<pid>.new` of a file it names
# (`<slug>-<12 or 32 hex digits>.md`), never another file a user keeps in the directory.
_LEFT_BEHIND = re.compile(r"\.[a-z0-9-]+-(?:[0-9a-f]{12}|[0-9a-f]{32})\.md\.([0-9]+)\.new")


def remove_left_behind(directory: Path) -> None:
    """Remove the new files that writes cut short left in `directory` (a process killed
    between writing one and renaming it over its name), those of processes no longer running.
    Read once per export: per file, it would read the directory once per item written."""
    for left in directory.iterdir():
        match = _LEFT_BEHIND.fullmatch(left.name)
        if match is None:
            continue
        try:
            if not stat.S_ISREG(left.lstat().st_mode):  # a new file is a regular file
                continue
        except FileNotFoundError:
            continue  # another export removed it
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its process runs: perhaps writing it now
        except ProcessLookupError:
            pass
        except (OSError, OverflowError):
            continue
        with contextlib.suppress(FileNotFoundError):
            left.unlink()


def replace_file(path: Path, text: str, *, mode: int = 0o666) -> None:
    """Write `path` whole or not at all: a new file beside it, renamed over it. A symlink at
    `path` is replaced, never followed; a full disk leaves no part of a file behind; the file
    has `mode` (less the umask), whatever mode an older one had."""
    with _replacing(path, mode=mode) as handle:
        handle.write(text)


@contextlib.contextmanager
def _export_file(path: Path) -> Iterator[TextIO]:
    """`--out` of a jsonl or csv export: the file it names (a symlink's target) is replaced
    once the export is whole, keeping its mode, so an export cut short (Ctrl-C, a full disk,
    the database gone) leaves the previous one as it was. A file a new one renamed over it
    would not stand for (another user's, or hard-linked), one in a directory the command may
    not add a file to, and what is not a regular file (`/dev/stdout`, a named pipe) are
    written to in place, as they were before."""
    # Looked at through `path` itself: `/dev/stdout` leads to /proc/self/fd/1, whose link
    # reads `pipe:[…]` when stdout is a pipe, a path that resolves to nothing; a symlink loop
    # is then an OSError (ELOOP), not resolve's RuntimeError.
    try:
        found = path.stat()
    except FileNotFoundError:
        found = None
    with contextlib.ExitStack() as stack:
        handle: TextIO | None = None
        if found is None or _renamed_over_alike(found):
            mode = stat.S_IMODE(found.st_mode) if found is not None else 0o666
            try:
                handle = stack.enter_context(_replacing(path.resolve(), mode=mode, newline=""))
            except OSError as exc:
                if found is None or exc.errno not in _NO_NEW_FILE:
                    raise
        if handle is None:
            handle = stack.enter_context(path.open("w", encoding="utf-8", newline=""))
        yield handle


# The directory refuses a new file (its permissions, an immutable directory, a read-only
# mount) while the file in it may still be written.
_NO_NEW_FILE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _renamed_over_alike(found: os.stat_result) -> bool:
    """Whether a new file renamed over this one stands for it: a regular file of this user's
    with no other name (the new file is this user's, and a hard link would keep the old)."""
    return stat.S_ISREG(found.st_mode) and found.st_nlink == 1 and found.st_uid == os.geteuid()


@contextlib.contextmanager
def _replacing(path: Path, *, mode: int, newline: str | None = None) -> Iterator[TextIO]:
    """A new file beside `path`, renamed over it once the block has written it; removed
    when the block fails. Its errors name `path`, not the new file."""
    # Named for this process: another one writing `path` at once (two exports into one
    # directory) would remove it, or rename it over `path` half written.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # left by a write of this process's pid cut short
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        # A write's error names no file, and the new file is not what the user asked for
        # (`Is a directory: .x.md.new` when x.md is one).
        if isinstance(exc, OSError) and exc.filename in (None, temporary, os.fspath(temporary)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def job_json(job: models.Job, callback: models.Callback | None) -> str:
    """A job as one JSON document (the verbose view)."""
    data = msgspec.to_builtins(job)
    data["callback"] = msgspec.to_builtins(callback) if callback else None
    return json.dumps(data)


async def purge(purger: maintenance.Purger, *, dry_run: bool, out: TextIO) -> int:
    """Run the retention purge now (or show what it would remove)."""
    counts = await (purger.preview() if dry_run else purger.run_once())
    print(json.dumps({"dry_run": dry_run, **msgspec.to_builtins(counts)}), file=out)
    return EXIT_OK

"""Operator tools against a real PostgreSQL, in process."""

from __future__ import annotations

import io
import json
import os
import stat
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import structlog.testing

from menos import cli, db, errors, settings, tools
from menos.queue import models, repository
from tests.integration import helpers


async def test_a_large_export_streams_without_the_bodies(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """200 completed items with 256 KiB bodies (50 MiB the export never writes): it holds
    neither every item nor any body in memory, yet writes every item."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " SELECT gen_random_uuid(), 'alice', 'markdown', 'cid:' || g, '0.1.0', 'completed',"
        " 'T' || g, repeat('x', 262144), jsonb_build_object('summary', 's' || g)"
        " FROM generate_series(1, 200) AS g"
    )
    for fmt in ("jsonl", "csv"):
        out = io.StringIO()
        tracemalloc.start()
        try:
            code = await tools.export(
                repo, owner=None, fmt=fmt, out=None, content_id=None, stdout=out
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code == tools.EXIT_OK
        lines = out.getvalue().splitlines()
        assert len(lines) == 200 + (fmt == "csv")
        if fmt == "jsonl":
            assert {json.loads(line)["title"] for line in lines} == {f"T{n}" for n in range(1, 201)}
        # processed_at as the API writes times: UTC with a Z
        stamps = (
            [json.loads(line)["processed_at"] for line in lines]
            if fmt == "jsonl"
            else [line.rsplit(",", 1)[1] for line in lines[1:]]
        )
        assert all(stamp.endswith("Z") for stamp in stamps), stamps[0]
        assert peak < 8 * 2**20, f"{fmt}: peak {peak / 2**20:.0f} MiB"


def test_the_dev_key_file_is_readable_by_its_owner_alone_whatever_it_was(
    database_url: str, tmp_path: Path
) -> None:
    """`menos dev` keeps its admin key in MENOS_HOME/dev_api_key at mode 0600: also when the
    file was made readable to others since, whether its key still works (it is kept) or not
    (a new one replaces it). O_CREAT's mode used to apply to a new file only."""
    conf = settings.Settings(home=tmp_path)
    key_file = tmp_path / "dev_api_key"
    first = cli._dev_key(conf, database_url)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.chmod(0o644)
    assert cli._dev_key(conf, database_url) == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.write_text("menos_revoked\n")
    key_file.chmod(0o644)
    second = cli._dev_key(conf, database_url)
    assert second != first and second.startswith("menos_")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev_api_key"]


def test_a_dev_key_file_that_is_not_utf8_is_replaced_by_a_new_key(
    database_url: str, tmp_path: Path
) -> None:
    """`menos dev` (make run) starts with a working key when its key file holds bytes that
    are not UTF-8 (the key saved again as UTF-16): it used to stop with a traceback."""
    conf = settings.Settings(home=tmp_path)
    key_file = tmp_path / "dev_api_key"
    key_file.write_bytes("menos_x\n".encode("utf-16"))
    key = cli._dev_key(conf, database_url)
    assert key.startswith("menos_") and len(key) > 20
    assert key_file.read_text(encoding="utf-8").strip() == key


async def test_a_markdown_export_writes_every_item_whole_and_only_in_its_directory(
    repo: repository.Repository, pool: asyncpg.Pool[Any], tmp_path: Path, monkeypatch: Any
) -> None:
    """Two items with one title whose ids end alike each get a file (the second overwrote
    the first); a symlink already in the directory is replaced, not written through; a
    write that fails (a full disk) leaves no part of a file and names it."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " SELECT ('00000000-0000-7000-8' || g || '00-0000deadbeef')::uuid, 'alice', 'markdown',"
        " 'cid:' || g, '0.1.0', 'completed', 'Same Title', 'b', '{\"summary\": \"s\"}'"
        " FROM generate_series(1, 2) AS g"
    )
    outside = tmp_path / "outside.md"
    outside.write_text("not the export's\n")
    directory = tmp_path / "export"
    directory.mkdir()
    (directory / "same-title-0000deadbeef.md").symlink_to(outside)
    out = io.StringIO()
    assert (
        await tools.export(
            repo, owner=None, fmt="markdown", out=directory, content_id=None, stdout=out
        )
        == tools.EXIT_OK
    )
    paths = [Path(line) for line in out.getvalue().splitlines()]
    assert len(set(paths)) == 2 and all(p.is_file() and not p.is_symlink() for p in paths)
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in paths)
    assert outside.read_text() == "not the export's\n"

    opened = os.fdopen

    class FullDisk:
        def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
            self.file = opened(fd, *args, **kwargs)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", FullDisk)
    again = tmp_path / "again"
    again.mkdir()
    try:
        await tools.export(repo, owner=None, fmt="markdown", out=again, content_id=None, stdout=out)
    except OSError as exc:
        assert exc.filename is not None and exc.filename.startswith(str(again))
    else:
        raise AssertionError("the failed write was not reported")
    finally:
        monkeypatch.undo()
    assert list(again.iterdir()) == []


async def test_classify_stale_leaves_content_made_current_after_it_was_listed(
    repo: repository.Repository, pool: asyncpg.Pool[Any], monkeypatch: Any
) -> None:
    """A stale item that a reprocess (API, bin/reprocess) completes by the running version
    between classify's listing and its turn is current: skipped, not run once more."""
    await helpers.owner(repo)
    await repo.enqueue(helpers.note())
    await pool.execute("UPDATE menos.pipeline_job SET status = 'completed', finished_at = now()")
    await pool.execute(
        "UPDATE menos.content SET processing_status = 'completed', pipeline_version = '0.1.0'"
    )
    listed = repo.classify_candidates

    async def made_current_meanwhile(**kwargs: Any) -> Any:
        batch = await listed(**kwargs)
        await pool.execute("UPDATE menos.content SET pipeline_version = '0.2.0'")
        return batch

    monkeypatch.setattr(repo, "classify_candidates", made_current_meanwhile)
    out = io.StringIO()
    await tools.classify(
        repo,
        owner=None,
        content_type=None,
        status=None,
        stale=True,
        limit=None,
        dry_run=False,
        version="0.2.0",
        data_tier="compact",
        out=out,
    )
    assert json.loads(out.getvalue()) == {
        "candidates": 1,
        "submitted": 0,
        "skipped": 1,
        "dry_run": False,
    }
    assert await pool.fetchval("SELECT count(*) FROM menos.pipeline_job") == 1


class _Terminal(io.StringIO):
    """stdout and stderr on one terminal."""

    def isatty(self) -> bool:
        return True


async def _three_failed_classified_on_a_terminal(
    repo: repository.Repository, pool: asyncpg.Pool[Any], monkeypatch: Any, **run: Any
) -> tuple[set[str], _Terminal]:
    """Three failed notes given to `classify` (`run`: limit, dry_run, out) with stderr on a
    terminal: their content ids, and the terminal."""
    await helpers.owner(repo)
    ids = {str((await repo.enqueue(helpers.note(body=f"# n{i}"))).content_id) for i in range(3)}
    await pool.execute("UPDATE menos.pipeline_job SET status = 'failed', finished_at = now()")
    await pool.execute("UPDATE menos.content SET processing_status = 'failed'")
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    await tools.classify(
        repo,
        owner=None,
        content_type=None,
        status=None,
        stale=False,
        version="0.1.0",
        data_tier="compact",
        **{"out": terminal, **run},
    )
    return ids, terminal


async def test_classify_dry_run_on_a_terminal_prints_each_id_on_a_line_of_its_own(
    repo: repository.Repository, pool: asyncpg.Pool[Any], monkeypatch: Any
) -> None:
    """The progress bar shares the terminal with the ids: no id is printed after the bar on
    its line (where a copy of it would take the bar along)."""
    ids, terminal = await _three_failed_classified_on_a_terminal(
        repo, pool, monkeypatch, limit=None, dry_run=True
    )
    # What the terminal shows last on each line: a carriage return goes back to its start.
    shown = [line.rsplit("\r", 1)[-1].strip() for line in terminal.getvalue().split("\n")]
    assert ids <= set(shown), shown


async def test_classify_bar_ends_full_when_fewer_candidates_than_the_limit(
    repo: repository.Repository, pool: asyncpg.Pool[Any], monkeypatch: Any
) -> None:
    """`--limit 10` with 3 candidates: the bar used to end at 3/10 (30 %, time left shown)
    although the run was over; it ends at 3/3."""
    _, terminal = await _three_failed_classified_on_a_terminal(
        repo, pool, monkeypatch, limit=10, dry_run=False, out=io.StringIO()
    )
    last = terminal.getvalue().rsplit("\r", 1)[-1]
    assert "3/3" in last and "100%" in last, last


class OutageRepository(repository.Repository):
    """Its first `outage` reads of a job find the database away."""

    def __init__(self, pool: asyncpg.Pool[Any], outage: int) -> None:
        super().__init__(pool, db.Queries())
        self.outage = outage

    async def job(self, job_id: uuid.UUID, *, owner: str | None) -> models.Job | None:
        if self.outage:
            self.outage -= 1
            raise errors.DatabaseUnavailable("[Errno 111] Connect call failed")
        return await super().job(job_id, owner=owner)


async def test_waiting_for_a_job_rides_out_a_database_outage(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """`bin/reprocess --wait` exited 1 (its code for a failed job) at the first read the
    database did not answer (a restart, a freeze), while the job went on and completed: it
    now logs the outage and keeps following the job."""
    await helpers.owner(repo)
    enqueued = await repo.enqueue(helpers.note())
    assert enqueued.job_id is not None
    await pool.execute("UPDATE menos.pipeline_job SET status = 'completed', finished_at = now()")
    waiting = OutageRepository(pool, outage=2)
    with structlog.testing.capture_logs() as logs:
        code = await tools.follow(waiting, enqueued.job_id, poll_s=0.01)
    assert code == tools.EXIT_OK
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "wait_database_unavailable",
        "wait_database_unavailable",
    ]
    assert any(e["event"] == "wait_database_available" for e in logs)


async def test_a_markdown_export_names_a_title_without_ascii_by_its_resource_key(
    repo: repository.Repository, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """docs/cli.md names each file by the slug of the title or resource key: a title in
    another script (日本語) leaves no ASCII to slug, so the resource key names it. An untitled
    note's file was `cid-<id>-<the id's tail again>.md`."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " VALUES ('00000000-0000-7000-8000-00000000beef', 'alice', 'web', 'url:AbC_d-E',"
        " '0.1.0', 'completed', '日本語', 'b', '{\"summary\": \"s\"}')"
    )
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " VALUES ('00000000-0000-7000-8000-00000000cafe', 'alice', 'markdown',"
        " 'cid:00000000-0000-7000-8000-00000000cafe', '0.1.0', 'completed', NULL, 'b',"
        ' \'{"summary": "s"}\')'
    )
    out = io.StringIO()
    await tools.export(repo, owner=None, fmt="markdown", out=tmp_path, content_id=None, stdout=out)
    # An untitled note's key holds its id: the id's tail is not written twice.
    assert sorted(Path(line).name for line in out.getvalue().splitlines()) == [
        "cid-00000000-0000-7000-8000-00000000cafe.md",
        "url-abc-d-e-00000000beef.md",
    ]


async def test_an_export_to_stdout_is_utf8_whatever_the_locale(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """With stdout in the locale's encoding (LANG=de_DE.ISO-8859-1, or PYTHONIOENCODING=ascii)
    a title with an emoji stopped the export with a traceback: it is written in UTF-8, as
    --out writes it."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " VALUES ('00000000-0000-7000-8000-00000000beef', 'alice', 'markdown',"
        " 'cid:00000000-0000-7000-8000-00000000beef', '0.1.0', 'completed', 'Café 🎉', 'b',"
        ' \'{"summary": "s"}\')'
    )
    for fmt in ("jsonl", "csv"):
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding="latin-1")
        code = await tools.export(
            repo, owner=None, fmt=fmt, out=None, content_id=None, stdout=stdout
        )
        stdout.flush()
        assert code == tools.EXIT_OK
        assert "Café 🎉" in raw.getvalue().decode("utf-8")


class _CutOff(Exception):
    """The export's reading stops here (as Ctrl-C or a lost database would stop it)."""


async def test_an_export_cut_short_leaves_the_previous_file_as_it_was(
    repo: repository.Repository,
    pool: asyncpg.Pool[Any],
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    """`--out FILE` is replaced only by a whole export: one stopped after its first item
    left a file cut to that item, the previous export lost. The file keeps its mode, a
    symlink to it stays a symlink, and what is not a regular file is written to directly."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, result)"
        " SELECT gen_random_uuid(), 'alice', 'markdown', 'cid:' || g, '0.1.0', 'completed',"
        " 'T' || g, jsonb_build_object('summary', 's' || g) FROM generate_series(1, 3) AS g"
    )
    target = tmp_path / "summaries.jsonl"
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target.name)

    async def export(out: Path) -> int:
        return await tools.export(
            repo, owner=None, fmt="jsonl", out=out, content_id=None, stdout=io.StringIO()
        )

    assert await export(link) == tools.EXIT_OK
    target.chmod(0o600)
    previous = target.read_text()
    assert len(previous.splitlines()) == 3
    completed = tools._completed

    async def cut_off(*args: Any) -> Any:
        async for item in completed(*args):
            yield item
            raise _CutOff

    monkeypatch.setattr(tools, "_completed", cut_off)
    for out in (target, link):
        try:
            await export(out)
        except _CutOff:
            pass
        else:
            raise AssertionError("the export was not cut off")
        assert target.read_text() == previous
    assert sorted(os.listdir(tmp_path)) == ["latest.jsonl", "summaries.jsonl"]
    monkeypatch.setattr(tools, "_completed", completed)
    assert await export(link) == tools.EXIT_OK
    assert link.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert await export(Path(os.devnull)) == tools.EXIT_OK
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)

"""The exports' files: markdown whose YAML frontmatter parses back to the item's data, CSV
a spreadsheet shows as text, files replaced whole."""

from __future__ import annotations

import csv
import datetime as dt
import errno
import io
import multiprocessing
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from menos import tools
from menos.queue import models

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def _item(*, title: str, tags: list[str], result: dict[str, Any]) -> models.Content:
    """A completed note with this title, submitter's tags and result."""
    return models.Content(
        content_id=models.ContentId(uuid.uuid4()),
        owner=models.Owner("alice"),
        content_type="markdown",
        resource_key="cid:x",
        source_url=None,
        title=title,
        tags=tags,
        body=None,
        source_metadata={},
        processing_status="completed",
        processed_at=NOW,
        pipeline_version="0.1.0",
        result=result,
        latest_job_id=None,
        created_at=NOW,
        updated_at=NOW,
    )


def test_frontmatter_keeps_characters_yaml_reads_as_line_breaks() -> None:
    """A title or tag with NEL (U+0085), U+2028 or U+2029 reads back unchanged, not folded."""
    title = "Line\x85Two"
    content = _item(title=title, tags=["a\x85b"], result={"summary": "s", "tags": ["plain"]})
    front = yaml.safe_load(tools.markdown_document(content).split("---\n")[1])
    assert front["title"] == title
    assert front["tags"] == ["a\x85b", "plain"]
    assert front["processed_at"] == tools.rfc3339(NOW)


@pytest.mark.parametrize("text", ["0o17", "1e3", "1.5e3", "-2E-3", "0X1F", "0B101", "1_0e1"])
def test_frontmatter_quotes_text_that_yaml_1_2_reads_as_a_number(text: str) -> None:
    """A title or tag `0o17` or `1e3` was written plain: PyYAML (YAML 1.1) read it back as
    text, but js-yaml, ruamel.yaml and Go's yaml.v3 (YAML 1.2) as 15 and 1000.0. It is quoted."""
    content = _item(title=text, tags=[text], result={"summary": "s", "tags": []})
    front = tools.markdown_document(content).split("---\n")[1]
    assert yaml.safe_load(front)["title"] == text
    node = yaml.compose(front)
    values = {key.value: value for key, value in node.value}
    assert values["title"].style in ("'", '"')
    assert [tag.style for tag in values["tags"].value] in (["'"], ['"'])


def _replace_often(path: str, text: str, times: int) -> int:
    """Replace `path` `times` times; how many of those failed."""
    failed = 0
    for _ in range(times):
        try:
            tools.replace_file(Path(path), text)
        except OSError:
            failed += 1
    return failed


def test_two_processes_replacing_one_file_at_once_both_succeed(tmp_path: Path) -> None:
    """Two exports into one directory write the same files: neither takes away the other's
    new file, so neither fails, and the file is whole after each."""
    target = tmp_path / "note.md"
    text = "x" * 100_000 + "\n"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as processes:
        failures = processes.starmap(_replace_often, [(str(target), text, 400)] * 2)
    assert failures == [0, 0]
    assert target.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.md"]


def test_a_file_that_cannot_be_replaced_is_named_not_the_new_file_beside_it(
    tmp_path: Path,
) -> None:
    """`menos: Is a directory: export/.note.md.new` named a file that is never left behind."""
    target = tmp_path / "note.md"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        tools.replace_file(target, "text\n")
    assert raised.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["note.md"]


def test_new_files_left_by_killed_writes_are_removed_before_an_export(tmp_path: Path) -> None:
    """A process killed between writing its new file and renaming it left `.note.md.PID.new`
    for good; the next export into the directory removes it, and one of a running process
    stays."""
    gone = multiprocessing.get_context("spawn").Process(target=int)
    gone.start()
    gone.join()
    left = tmp_path / f".note-0123456789ab.md.{gone.pid}.new"
    running = tmp_path / f".note-0123456789ab.md.{os.getppid()}.new"
    for path in (left, running, tmp_path / "note-0123456789ab.md"):
        path.write_text("text")
    tools.remove_left_behind(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "note-0123456789ab.md"]


def test_an_export_leaves_the_users_own_files_named_like_new_files(tmp_path: Path) -> None:
    """An export into a directory of the user's (`--out ~/notes`) removed any file named
    `.x.N.new` whose N was no running process (`.journal.20240101.new`), and stopped with
    `Is a directory` at a directory so named: only the new files of its own names go."""
    mine = [".journal.20240101.new", ".plan.md.99999999.new"]
    for name in mine:
        (tmp_path / name).write_text("the user's")
    (tmp_path / ".cache.99999999.new").mkdir()
    (tmp_path / ".link-0123456789ab.md.99999999.new").symlink_to(tmp_path / mine[0])
    tools.remove_left_behind(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*mine, ".cache.99999999.new", ".link-0123456789ab.md.99999999.new"]
    )


def test_a_title_or_topic_with_line_breaks_stays_one_line_of_the_document() -> None:
    """A title `Line one\nLine two` (the API keeps line breaks in a title it is given) made
    the heading `# Line one` and put `Line two` in the text; a topic's break did the same to
    its list item."""
    content = _item(
        title="Line one\nLine two\r\n## Topics",
        tags=[],
        result={"summary": "s", "tags": [], "topics": [{"name": "a\u2028b"}]},
    )
    document = tools.markdown_document(content)
    text = document.split("---\n", 2)[2]
    assert text.splitlines() == [
        "",
        "# Line one Line two ## Topics",
        "",
        "s",
        "",
        "## Topics",
        "",
        "- a b",
    ]
    assert yaml.safe_load(document.split("---\n")[1])["title"] == content.title


def test_a_csv_cell_is_text_also_where_a_spreadsheet_splits_at_semicolons() -> None:
    """Excel in German, French or Dutch splits a CSV file's cells at `;` too: a title
    `Budget;=1+1;` ran `=1+1`, and of the tags joined with `;` only the first was guarded.
    Each part a `;` starts gets the `'` a cell's start gets; result tags never need it."""
    content = _item(
        title='Budget;=1+1;"@SUM(A1)"',
        tags=["ok", "-2+3", "fine;+x"],
        result={"summary": "a-b; +c", "tags": ["plain"]},
    )
    out = io.StringIO()
    tools._write_items(out, "csv")(content)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert row["title"] == "Budget;'=1+1;\"'@SUM(A1)\""
    assert row["tags"] == "ok;'-2+3;fine;'+x"
    assert row["summary"] == "a-b; +c"  # a space first: shown as text
    assert row["result_tags"] == "plain"
    for cell in row.values():
        for part in cell.split(";"):
            assert not part.lstrip('"').startswith(("=", "+", "-", "@", "\t", "\r")), cell


def test_out_through_a_symlink_to_a_pipe_is_written_to_directly(tmp_path: Path) -> None:
    """`--out /dev/stdout` with stdout a pipe: /dev/stdout leads to /proc/self/fd/1, whose
    link reads `pipe:[…]`, a path that resolves to nothing; the pipe is written to."""
    reader, writer = os.pipe()
    link = tmp_path / "stdout"
    link.symlink_to(f"/proc/self/fd/{writer}")
    try:
        with tools._export_file(link) as handle:
            handle.write("x\n")
        assert os.read(reader, 100) == b"x\n"
    finally:
        os.close(reader)
        os.close(writer)


def test_out_in_a_symlink_loop_fails_as_an_os_error(tmp_path: Path) -> None:
    """The command's usual one-line message (`Too many levels of symbolic links`), not a
    RuntimeError's traceback."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OSError) as raised, tools._export_file(loop):
        pass
    assert raised.value.filename == str(loop)


def test_a_hard_linked_out_file_is_written_in_place(tmp_path: Path) -> None:
    """A new file renamed over a hard-linked one left the other name with the old export:
    such a file is written in place, both names seeing the new one."""
    target, other = tmp_path / "out.jsonl", tmp_path / "same.jsonl"
    target.write_text("old\n")
    os.link(target, other)
    with tools._export_file(target) as handle:
        handle.write("new\n")
    assert (target.read_text(), other.read_text(), target.stat().st_nlink) == ("new\n", "new\n", 2)


def test_an_out_file_in_a_directory_refusing_new_files_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the user may write in a directory they may not add to (its permissions, an
    immutable directory, a read-only mount) was written before exports replaced files whole;
    it still is. A file that does not exist there yet fails, naming it."""
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    opened = os.open

    def refuse_new_files(name: Any, flags: int, mode: int = 0o777) -> int:
        if str(name).endswith(".new"):
            raise PermissionError(errno.EACCES, "Permission denied", str(name))
        return opened(name, flags, mode)

    monkeypatch.setattr(os, "open", refuse_new_files)
    with tools._export_file(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
    missing = tmp_path / "new.jsonl"
    with pytest.raises(PermissionError) as refused, tools._export_file(missing):
        pass
    assert refused.value.filename == str(missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_times_are_written_in_utc_with_a_z_as_the_api_writes_them() -> None:
    """Exports and command output wrote `+00:00` where the API writes `Z`; a time of
    another zone is written as the same instant in UTC."""
    kolkata = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert tools.rfc3339(dt.datetime(2026, 11, 29, 19, 6, 46, 611892, tzinfo=dt.UTC)) == (
        "2026-11-29T19:06:46.611892Z"
    )
    assert tools.rfc3339(dt.datetime(2026, 11, 30, 0, 36, tzinfo=kolkata)) == (
        "2026-11-29T19:06:00Z"
    )

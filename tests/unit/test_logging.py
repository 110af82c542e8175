"""Log lines of other libraries, through the standard library's logging, as menos's JSON."""

from __future__ import annotations

import errno
import io
import json
import logging
import uuid

import pytest
import structlog
import tqdm

from menos import logging as menos_logging


def test_a_library_warning_with_a_traceback_is_one_json_line_naming_its_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library's line with exc_info names the logger and carries the traceback as text,
    not the reprs of the exception tuple."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    try:
        menos_logging.configure("json")
        try:
            raise ConnectionRefusedError("the database system is starting up")
        except ConnectionRefusedError:
            logging.getLogger("uvicorn.error").warning("Failed to restore", exc_info=True)
    finally:  # configure() is process-wide: put back what the other tests run with
        root.handlers[:], root.level = handlers, level
        structlog.configure(**config)
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["event"] == "Failed to restore"
    assert record["logger"] == "uvicorn.error"
    assert record["level"] == "warning"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert "ConnectionRefusedError: the database system is starting up" in record["exception"]
    assert "exc_info" not in record


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_pools_failed_reconnects_are_one_line_each(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """asyncpg's pool logs a traceback at every failed reconnect (8 tracebacks, 3,500 lines
    in a 13 s outage under `make run`): each is one line naming the error."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    try:
        menos_logging.configure(fmt)
        try:
            raise ConnectionRefusedError("Connect call failed ('127.0.0.1', 5432)")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection floor; retrying", exc_info=True
            )
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.configure(**config)
    [line] = capsys.readouterr().err.splitlines()
    assert "Failed to restore the pool connection floor" in line
    assert "ConnectionRefusedError: Connect call failed" in line
    if fmt == "json":
        assert "exception" not in json.loads(line)


def test_a_console_traceback_does_not_print_the_secrets_its_frames_hold(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`make run` logs to a terminal in console format: a logged exception shows where it
    happened, never the values of the frames' variables (a caller's API key, a webhook
    secret, the LLM's Authorization header)."""

    def sign(secrets: list[str], headers: dict[str, str]) -> None:
        raise RuntimeError("unexpected")

    # Made at run time: the traceback shows source lines, where a literal would appear.
    secret, key = "whsec_" + "c2VjcmV0" * 2, "menos_" + "k3y" * 3

    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    try:
        menos_logging.configure("console")
        try:
            sign([secret], {"authorization": f"Bearer {key}"})
        except RuntimeError:
            structlog.get_logger().exception("callback_attempt_error")
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.configure(**config)
    err = capsys.readouterr().err
    assert "callback_attempt_error" in err
    assert "RuntimeError" in err and "unexpected" in err
    assert secret not in err
    assert key not in err


def test_a_console_line_shows_ids_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """Console values are repr()s: an audit line read `subject=UUID('01a2…')`, and so did
    every id inside its detail."""
    subject, job_id = uuid.uuid4(), uuid.uuid4()
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    try:
        menos_logging.configure("console")
        structlog.get_logger().info("audit", subject=subject, detail={"jobs": [job_id]})
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.configure(**config)
    err = capsys.readouterr().err
    assert f"subject={subject}" in err and f"'jobs': ['{job_id}']" in err, err
    assert "UUID(" not in err


def test_the_extractor_does_not_warn_about_each_page_without_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """trafilatura logged `discarding data: None` at warning level for every empty page:
    255 lines in a half-hour soak, where the job's CONTENT_EMPTY already says it."""
    from menos.pipeline.sources import web

    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    extractor = logging.getLogger("trafilatura")
    extractor_level = extractor.level
    try:
        menos_logging.configure("json")
        assert web._readable_html("<html><body></body></html>") == ("", None)
    finally:
        root.handlers[:], root.level = handlers, level
        extractor.setLevel(extractor_level)
        structlog.configure(**config)
    assert capsys.readouterr().err == ""


class _FullDisk:
    """A file whose disk is full for its first write, then has room again."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.full = True

    def write(self, text: str) -> int:
        if self.full:
            self.full = False
            raise OSError(errno.ENOSPC, "No space left on device")
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_line_a_full_disk_refuses_leaves_stderr_for_the_lines_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC is not stderr gone: the line is dropped, and once the disk has room the next
    lines are written there, not to /dev/null for the rest of the process."""
    gone: list[bool] = []
    monkeypatch.setattr(menos_logging, "stderr_to_devnull", lambda: gone.append(True))
    file = _FullDisk()
    logger = menos_logging._StderrLogger(file)  # type: ignore[arg-type]
    logger.info("refused")
    logger.info("written")
    assert gone == []
    assert "".join(file.lines) == "written\n"


@pytest.mark.parametrize("code", [errno.EPIPE, errno.EIO, errno.ECONNRESET, errno.EBADF])
def test_a_line_stderr_no_longer_takes_sends_the_rest_to_devnull(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    gone: list[bool] = []
    monkeypatch.setattr(menos_logging, "stderr_to_devnull", lambda: gone.append(True))
    file = _FullDisk()
    file.write = lambda text: (_ for _ in ()).throw(OSError(code, "gone"))  # type: ignore[method-assign]
    menos_logging._StderrLogger(file).info("lost")  # type: ignore[arg-type]
    assert gone == [True]


def test_a_line_logged_under_a_progress_bar_starts_a_line_of_its_own() -> None:
    """`bin/classify` on a terminal: its audit lines were written after the bar's text on
    the bar's line (`classify: 3item [00:00, …]2026-… [info] audit…`)."""
    terminal = io.StringIO()
    bar = tqdm.tqdm(desc="classify", unit="item", file=terminal, mininterval=0)
    try:
        bar.update(3)
        menos_logging._StderrLogger(terminal).info("audit line")  # type: ignore[arg-type]
        bar.update(1)
    finally:
        bar.close()
    drawn = terminal.getvalue()
    before, after = drawn.split("audit line\n")
    assert before.endswith("\r"), repr(before)  # the bar's line was cleared first
    assert "classify: 3item" in before, repr(drawn)
    assert after.startswith("\rclassify: 3item"), repr(drawn)  # and drawn again below it

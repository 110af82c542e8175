"""Log lines of other libraries, through the standard library's logging, as menos's JSON."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from menos import logging as menos_logging


def test_a_library_warning_with_a_traceback_is_one_json_line_naming_its_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncpg's pool logs with exc_info: the line names the logger and carries the
    traceback as text, not the reprs of the exception tuple."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    try:
        menos_logging.configure("json")
        try:
            raise ConnectionRefusedError("the database system is starting up")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").warning("Failed to restore", exc_info=True)
    finally:  # configure() is process-wide: put back what the other tests run with
        root.handlers[:], root.level = handlers, level
        structlog.configure(**config)
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["event"] == "Failed to restore"
    assert record["logger"] == "asyncpg.pool"
    assert record["level"] == "warning"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert "ConnectionRefusedError: the database system is starting up" in record["exception"]
    assert "exc_info" not in record

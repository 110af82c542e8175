"""structlog configuration: JSON lines in production, console on a terminal, always on stderr."""

from __future__ import annotations

import errno
import logging
import os
import sys
import uuid
from typing import Any

import msgspec
import structlog
import tqdm

from menos import errors


def configure(fmt: str, *, level: int = logging.INFO) -> None:
    """Route structlog and the standard library's logging to stderr in `fmt` (json|console)."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "console":
        console = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # The default (rich's, when installed) prints every frame's local variables: API
            # keys, webhook secrets and the LLM's Authorization header sit in frames that an
            # unexpected error unwinds.
            exception_formatter=structlog.dev.plain_traceback,
        )

        def renderer(logger: Any, name: str, event: structlog.types.EventDict) -> Any:
            # Values are shown as repr(): an id read `UUID('01a2…')`, also inside a detail.
            return console(logger, name, {key: _ids_as_text(v) for key, v in event.items()})

    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info
            if fmt == "json"
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _StderrLogger(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Lines of libraries (asyncpg, uvicorn) name their logger, and their traceback is text.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if fmt == "json" else []),
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # trafilatura warns about each page it finds no text in ("discarding data: None"): the
    # job's own CONTENT_EMPTY says so, and a warning per empty page is noise to an operator.
    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLineReconnects) for f in pool.filters):
        pool.addFilter(_OneLineReconnects())


def _ids_as_text(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {key: _ids_as_text(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_ids_as_text(v) for v in value]
    return value


def stderr_to_devnull() -> None:
    """Messages and logs have nowhere to go: discard them. Descriptor 2 becomes /dev/null, so
    no file or socket opened later takes its place (and gets what is written there)."""
    fd = os.open(os.devnull, os.O_WRONLY)
    if fd != 2:
        os.dup2(fd, 2)
        os.close(fd)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - for the process


# stderr is gone for good: its terminal closed, the reader of its pipe or socket, its
# descriptor.
_GONE = frozenset({errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.EBADF})


class _StderrLogger(structlog.PrintLogger):
    """structlog's PrintLogger, but a line stderr no longer takes (its terminal closed: EIO;
    the reader of its pipe gone: EPIPE) is dropped with the ones after it, instead of raising
    in the code that logs: a service stopped by the SIGHUP of its closed terminal still gives
    its jobs back. A line refused for a while (a full disk: ENOSPC) is dropped alone: the
    lines after it are written once the disk has room again. A progress bar drawn on the same
    terminal (`bin/reprocess --wait`, `bin/classify`) is cleared for the line and drawn again
    below it, rather than the line continuing the bar's."""

    def msg(self, message: str) -> None:
        try:
            # nolock: tqdm's lock is a multiprocessing one, made on first use; the bars are
            # drawn from this thread only.
            with tqdm.tqdm.external_write_mode(file=self._file, nolock=True):
                super().msg(message)
        except OSError as exc:
            if exc.errno in _GONE:
                stderr_to_devnull()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _OneLineReconnects(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect, every 1 to 60 s per
    pool while the database is away: thousands of lines for a short outage, drowning menos's
    own one-line warnings. What failed is enough: the error's type and text, in the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def _dumps(event: dict[str, Any], **_: Any) -> str:
    """One JSON line: ids, times and decimals as their standard strings (not Python reprs),
    an exception as its type and message, anything else msgspec cannot encode as its str()."""
    return msgspec.json.encode(event, enc_hook=_text).decode()


def _text(value: Any) -> str:
    if isinstance(value, BaseException):
        return errors.describe(value)
    return str(value)

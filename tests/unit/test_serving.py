"""What bin/api's server does besides the app: its file limit and its accept errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import structlog

from menos.http import serving


def test_the_api_may_open_files_up_to_its_hard_limit() -> None:
    """Started from a shell at 1,024 open files, the API had as many connections, pool and
    log included; it raises its limit to the hard one."""
    code = (
        "import resource\n"
        "from menos.http import serving\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))\n"
        "serving.open_files_to_hard_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True", done.stderr


def test_accepts_failing_for_want_of_files_are_logged_now_and_then() -> None:
    """asyncio logs a failed accept with its traceback at every try (hundreds of thousands of
    lines in 20 s when the files ran out); other loop errors are left to the default."""
    handler = serving._AcceptErrors()
    loop = asyncio.new_event_loop()
    defaults: list[dict[str, object]] = []
    loop.default_exception_handler = defaults.append  # type: ignore[method-assign]
    failed = OSError(24, "Too many open files")
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(1000):
                handler(
                    loop, {"message": "socket.accept() out of system resource", "exception": failed}
                )
            handler(loop, {"message": "something else"})
    finally:
        loop.close()
    assert [(e["event"], e["since_last"]) for e in logs] == [("accept_failed", 0)]
    assert defaults == [{"message": "something else"}]

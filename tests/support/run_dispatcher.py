"""A stand-in for `bin/dispatcher` until the CLI has its subcommand (delete it then)."""

from __future__ import annotations

import asyncio
import signal
import sys

from menos import cli, errors, settings
from menos import logging as menos_logging
from menos.queue import dispatcher


async def _main(conf: settings.Settings, dsn: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await dispatcher.serve(conf, dsn, stop)


def main() -> int:
    """Run one dispatcher like `bin/dispatcher` would, on the database of the environment."""
    conf = settings.from_env()
    menos_logging.configure(conf.log_format)
    try:
        with cli.database(conf) as dsn:
            asyncio.run(_main(conf, dsn))
    except errors.MenosError as exc:
        print(f"menos: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m menos …`: every bin/ entry goes through here."""

from __future__ import annotations

import signal

try:
    from menos import cli
except KeyboardInterrupt:  # Ctrl-C while Python loads the command: no traceback of imports
    raise SystemExit(128 + signal.SIGINT) from None

if __name__ == "__main__":
    raise SystemExit(cli.main())

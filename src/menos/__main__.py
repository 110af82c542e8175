"""`python -m menos …`: every bin/ entry goes through here."""

from __future__ import annotations

from menos import cli

if __name__ == "__main__":
    raise SystemExit(cli.main())

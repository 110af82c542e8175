"""The command-line examples of docs/cli.md print what the commands print."""

from __future__ import annotations

import json
import re

from menos import db
from tests.support.processes import ROOT

DOC = ROOT / "docs" / "cli.md"


def test_migrate_example_on_a_new_database_lists_every_migration() -> None:
    """`bin/menos migrate` on a new database applies every migration file, in order."""
    example = re.search(r"# on a new database\n(\{.*\})\n", DOC.read_text())
    assert example is not None
    assert json.loads(example.group(1)) == {
        "applied": [version for version, _, _ in db.migrations()]
    }

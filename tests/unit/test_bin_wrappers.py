"""The bin/ wrappers find the project's virtual environment whatever the user's shell setup."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.processes import BIN, ROOT


@pytest.mark.parametrize("name", sorted(path.name for path in BIN.iterdir()))
def test_a_wrapper_runs_menos_with_cdpath_exported(name: str) -> None:
    """`cd` prints the directory it found through an exported CDPATH: the wrapper must not take
    that output for its own directory (it then ran a python without menos)."""
    proc = subprocess.run(
        [f"bin/{name}", "--help"],
        cwd=ROOT,
        env={**os.environ, "CDPATH": "."},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # A usage line that can be pasted: no `menos` command is installed, bin/menos is there.
    command = "" if name == "menos" else f" {name}"
    assert proc.stdout.startswith(f"usage: bin/menos{command} "), proc.stdout

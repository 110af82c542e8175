"""The one version of menos (in pyproject.toml) and `make version-bump-*`."""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from importlib import metadata
from pathlib import Path

_VERSION_LINE = re.compile(r'^version = "(\d+)\.(\d+)\.(\d+)"$', re.MULTILINE)


# Run from a checkout (the editable install `make install` makes), the version is read from
# its pyproject.toml: the installed metadata keeps the version of the last install, so after
# `make version-bump-*` bin/api and bin/worker would stamp and report the old one.
CHECKOUT_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def app_version() -> str:
    """The version in the checkout's pyproject.toml, else the installed package's (semver);
    stamped on jobs and content, reported by /health.

    Cached: the version a process started with is the one it stamps until it stops."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        match = _VERSION_LINE.search(CHECKOUT_PYPROJECT.read_text(encoding="utf-8"))
        if match is not None:
            return ".".join(match.groups())
    return metadata.version("menos")


def bump(part: str, pyproject: Path) -> str:
    """Raise one part of the version in pyproject.toml; returns the new version."""
    text = pyproject.read_text(encoding="utf-8")
    match = _VERSION_LINE.search(text)
    if match is None:
        raise SystemExit(f"no version line in {pyproject}")
    major, minor, patch = (int(x) for x in match.groups())
    if part == "major":
        major, minor, patch = major + 1, 0, 0
    elif part == "minor":
        minor, patch = minor + 1, 0
    elif part == "patch":
        patch += 1
    else:
        raise SystemExit("bump major, minor or patch")
    new = f"{major}.{minor}.{patch}"
    pyproject.write_text(_VERSION_LINE.sub(f'version = "{new}"', text, count=1), encoding="utf-8")
    return new


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "bump":
        raise SystemExit("usage: python -m menos.versions bump major|minor|patch")
    print(bump(sys.argv[2], Path("pyproject.toml")))

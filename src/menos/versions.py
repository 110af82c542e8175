"""The one version of menos (in pyproject.toml) and `make version-bump-*`."""

from __future__ import annotations

import functools
import re
import sys
from importlib import metadata
from pathlib import Path

_VERSION_LINE = re.compile(r'^version = "(\d+)\.(\d+)\.(\d+)"$', re.MULTILINE)


@functools.cache
def app_version() -> str:
    """The installed package version (semver); stamped on jobs and content.

    Cached: reading package metadata costs a file lookup, and the version cannot change
    while a process runs."""
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

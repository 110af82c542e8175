"""Packages menos's code imports itself are declared, from the version that code needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _lower_bound(package: str) -> tuple[int, ...] | None:
    for requirement in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        name, marker, version = requirement.partition(">=")
        if name.strip().lower() == package and marker:
            return tuple(int(part) for part in version.split(",")[0].strip().split("."))
    return None


def test_urllib3_is_declared_from_the_version_whose_read1_bounds_what_it_inflates() -> None:
    """The transcript download reads YouTube's answers with urllib3's read1, which inflates a
    bounded piece at a time only from urllib3 2.6 on (with 2.5, 590 bytes of `gzip, gzip`
    grew the worker by 510 MB); 1.26, which requests also accepts, has no BaseHTTPResponse."""
    bound = _lower_bound("urllib3")
    assert bound is not None and bound >= (2, 6), bound

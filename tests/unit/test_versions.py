"""`make version-bump-*` changes the one version in pyproject.toml, semver-style."""

from __future__ import annotations

from pathlib import Path

import pytest

from menos import versions


@pytest.mark.parametrize(
    ("part", "expected"), [("patch", "1.4.3"), ("minor", "1.5.0"), ("major", "2.0.0")]
)
def test_bump_raises_one_part_and_resets_the_lower_ones(
    tmp_path: Path, part: str, expected: str
) -> None:
    """Bumping a part gives the next semver and leaves the rest of the file as it was."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "menos"\nversion = "1.4.2"\n\n[tool.x]\nversion = "9"\n'
    )
    assert versions.bump(part, pyproject) == expected
    assert pyproject.read_text() == (
        f'[project]\nname = "menos"\nversion = "{expected}"\n\n[tool.x]\nversion = "9"\n'
    )


def test_the_running_version_is_the_one_in_pyproject() -> None:
    """app_version() (stamped on jobs, shown by /health) is pyproject.toml's version."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert versions.app_version() == project["version"]


def test_a_bumped_checkout_reports_its_new_version_without_reinstalling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `make version-bump-*` the package metadata still holds the old version: the
    running version is the checkout's pyproject.toml, read when the process starts."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "menos"\nversion = "1.4.2"\n')
    monkeypatch.setattr(versions, "CHECKOUT_PYPROJECT", pyproject)
    versions.app_version.cache_clear()
    try:
        versions.bump("minor", pyproject)
        assert versions.app_version() == "1.5.0"
    finally:
        versions.app_version.cache_clear()

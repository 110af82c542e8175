"""Every named SQL query is used by the code, and every name the code uses exists."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from menos import db

SRC = Path(__file__).resolve().parents[2] / "src" / "menos"
USE = re.compile(
    r"""(?:_q|queries)\[\s*["']([a-z_0-9]+)["']\s*\]"""
    r"""|_fetch(?:row|val|_planned|_committed)?\(\s*["']([a-z_0-9]+)["']"""
)


def used_names() -> set[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for match in USE.finditer(path.read_text(encoding="utf-8")):
            names.add(match.group(1) or match.group(2))
    return names


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    """No dead SQL lies in sql/queries, and no code asks for a query that is not there."""
    defined = set(db.Queries())
    used = used_names()
    assert used - defined == set(), "used but not defined"
    assert defined - used == set(), "defined but never used"


def test_no_sql_is_formatted_with_identifiers_in_runtime_code() -> None:
    """Runtime code never builds SQL with f-strings (identifiers are never formatted in)."""
    pattern = re.compile(r"""f["'](?:SELECT|INSERT|UPDATE|DELETE|CREATE|DROP)\b""", re.I)
    offenders = [
        str(path) for path in SRC.rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ({"a": "x\x00y"}, {"a": "x\ufffdy"}),
        ({"k\x00": ["\x00\x00"]}, {"k\ufffd": ["\ufffd\ufffd"]}),
        ("a literal \\u0000 stays", "a literal \\u0000 stays"),
        ("a backslash then \\\x00", "a backslash then \\\ufffd"),
        ({"error": {"message": "cut \ud83d here"}}, {"error": {"message": "cut \ufffd here"}}),
        ({"lone\udc00": ["\ud800\x00"]}, {"lone\ufffd": ["\ufffd\ufffd"]}),
    ],
)
def test_json_sent_to_postgresql_holds_no_nul(value: object, stored: object) -> None:
    """PostgreSQL's JSON types refuse NUL characters and lone surrogates (which UTF-8 cannot
    hold): they are sent as U+FFFD, and nothing else changes (not even the text `\\u0000`)."""
    assert msgspec.json.decode(db._encode_json(value)) == stored

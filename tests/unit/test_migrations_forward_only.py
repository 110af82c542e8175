"""Migrations are forward-only: a file, once committed, is never edited.

A database applies a migration once and records its checksum; an edited file then either
stops every command on that database (`the database was migrated by another version`) or,
for a version recorded before checksums were kept, leaves the database with the earlier
objects while its record says otherwise. A change goes into a new file, and each new file's
checksum is added here.
"""

from __future__ import annotations

from pathlib import Path

from menos import db
from tests.support.processes import ROOT

# The SHA-256 of each committed migration file, by version.
COMMITTED = {
    1: "9278d7293d14e1a74e45b430df509a750b6008323d914ca9a12109663f85b3cb",
    2: "ffa10ff4d45a56c5b313254ebfb1882487e4fef1117c4ecfc3fe322145023ee7",
    3: "51239a5badc4135eab33438afe1c619ec457a3fab97b50de7d785e4b36ad86f3",
    4: "bc77ec2b40ab18e8d42c41b77b9d9f146062af0110a7d0240b9eb9c0f6238f2b",
    5: "ac63260493dd0781598c5d2f62c801c82cfc8c3372b9daa8fe64ddeac787ffae",
    6: "3d9293ed8bfac5baa2872fa09c51afe334086332e57bfe103ef96ed6de78fed9",
    7: "0b7d1b3eb8b82139944fe6b815af83d74ae376d1e0806ebadde956ea2947dbd3",
    8: "7217ba539ea7586a1b2dad29f15af9665f49a9c0e49833e125dad4e77bc27980",
    9: "97ec7182778a94dbca0fc5e885855d68a3249be986ed5a1cf0c077d3bcfa8515",
    10: "3287a6cf2f9a5d9d84ed6566f2130256447c8b2a9bbebc1018869e64e4aa3eca",
    11: "8736c59616688bdacbe58ebbee273e5c8b1cf73ac7ac6de5155711b4fa7829f3",
    12: "dc6ce9a2dae37803b3252d87d7bee13f9b92c05f76a3651ac80efd995cf78375",
    13: "37bc481d3bd19b36cf66e04c9e2b9136d533ebfcb6161ec4d16f3b7f409d3398",
    14: "de3b694636cda0c51d22109639c5f54f32a2d66413dddb2322a29d58091ad99d",
    15: "9593a3fc31cb8e98524b7fd015760e8494dc4bd4f6d67e60e1b77f65f3b9c7e2",
    16: "28e7ea93150b7b72bc3951ed5ac80c8a49598a1d4eb29bf718ebdfbe6c6b380d",
    17: "1fcab84230e7bfd91ebf918e3455f2e0e42975b5275c003820792aeeecb11d5b",
    18: "eaf195a87cf9df43fcfb0dba5d26013021cea8b46eb57f55406dd6e4b9436581",
    19: "221ad84178d6b34c01492a8d2c63441492c072638cb564b04670e30a0e01ac61",
    20: "9b5024892c434498fdb66f47e7f21951062ca674ac55eacba92cf344fb8f2180",
}


def test_no_committed_migration_is_edited() -> None:
    """Every migration file keeps the text it was committed with, and each one is listed."""
    assert {version: db._checksum(sql) for version, _, sql in db.migrations()} == COMMITTED


def test_a_process_keeps_the_migration_files_it_first_found(tmp_path: Path) -> None:
    """A checkout upgraded under a running API made its `/ready` answer 503 `outdated`
    (it read the files on every probe), although the code it runs needs no new migration."""
    (tmp_path / "0001_first.sql").write_text("SELECT 1;\n")
    assert [version for version, _, _ in db.migrations(tmp_path)] == [1]
    (tmp_path / "0002_added_later.sql").write_text("SELECT 2;\n")
    assert [version for version, _, _ in db.migrations(tmp_path)] == [1]


def test_each_superseded_text_is_kept_as_a_fixture() -> None:
    """db.SUPERSEDED lists exactly the texts under tests/fixtures/superseded_migrations, the
    ones the upgrade test applies as the builds that applied them did."""
    fixtures = ROOT / "tests" / "fixtures" / "superseded_migrations"
    kept: dict[int, set[str]] = {}
    for path in fixtures.glob("*.sql"):
        kept.setdefault(int(path.name[:4]), set()).add(db._checksum(path.read_text()))
    assert kept == {version: set(sums) for version, sums in db.SUPERSEDED.items()}

"""Operator tools against a real PostgreSQL, in process."""

from __future__ import annotations

import io
import json
import tracemalloc
from typing import Any

import asyncpg

from menos import tools
from menos.queue import repository
from tests.integration import helpers


async def test_a_large_export_streams_without_the_bodies(
    repo: repository.Repository, pool: asyncpg.Pool[Any]
) -> None:
    """200 completed items with 256 KiB bodies (50 MiB the export never writes): it holds
    neither every item nor any body in memory, yet writes every item."""
    await helpers.owner(repo)
    await pool.execute(
        "INSERT INTO menos.content (content_id, owner, content_type, resource_key,"
        " pipeline_version, processing_status, title, body, result)"
        " SELECT gen_random_uuid(), 'alice', 'markdown', 'cid:' || g, '0.1.0', 'completed',"
        " 'T' || g, repeat('x', 262144), jsonb_build_object('summary', 's' || g)"
        " FROM generate_series(1, 200) AS g"
    )
    for fmt in ("jsonl", "csv"):
        out = io.StringIO()
        tracemalloc.start()
        try:
            code = await tools.export(
                repo, owner=None, fmt=fmt, out=None, content_id=None, stdout=out
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code == tools.EXIT_OK
        lines = out.getvalue().splitlines()
        assert len(lines) == 200 + (fmt == "csv")
        if fmt == "jsonl":
            assert {json.loads(line)["title"] for line in lines} == {f"T{n}" for n in range(1, 201)}
        assert peak < 8 * 2**20, f"{fmt}: peak {peak / 2**20:.0f} MiB"

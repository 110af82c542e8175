"""What an OPTIONS request on an API path is told it may do there."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from menos.queue import repository
from tests.integration.test_api_in_process import served


async def test_options_names_every_method_a_path_serves(
    pool: asyncpg.Pool[Any], repo: repository.Repository
) -> None:
    """OPTIONS /api/v1/content answered `Allow: GET, HEAD, OPTIONS` though the path takes
    uploads (POST), and a 405 there said `GET, HEAD, OPTIONS, POST`: both name POST now."""
    key = (await repo.create_key("alice", "user")).api_key
    auth = {"Authorization": f"Bearer {key}"}
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        for path, allowed in (
            ("/api/v1/content", "GET, HEAD, OPTIONS, POST"),
            ("/api/v1/ingest", "OPTIONS, POST"),
            ("/api/v1/jobs", "GET, HEAD, OPTIONS"),
        ):
            options = await client.options(path, headers=auth)
            assert options.status_code == 204, path
            assert options.headers["allow"] == allowed, path
            refused = await client.request("PATCH", path, headers=auth)
            assert sorted(refused.headers["allow"].split(", ")) == allowed.split(", "), path

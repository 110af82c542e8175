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
    uploads (POST), and a 405 there said `GET, HEAD, OPTIONS, POST`: both name POST now, and
    in the same order (the cancel route's OPTIONS said `OPTIONS, POST`, its 405 `POST,
    OPTIONS`)."""
    key = (await repo.create_key("alice", "user")).api_key
    auth = {"Authorization": f"Bearer {key}"}
    async with served(pool) as url, httpx.AsyncClient(base_url=url) as client:
        for path, allowed in (
            ("/api/v1/content", "GET, HEAD, OPTIONS, POST"),
            ("/api/v1/ingest", "OPTIONS, POST"),
            ("/api/v1/jobs", "GET, HEAD, OPTIONS"),
            ("/api/v1/jobs/01a2159d-524a-7593-8d2b-6969448d34eb/cancel", "OPTIONS, POST"),
        ):
            options = await client.options(path, headers=auth)
            assert options.status_code == 204, path
            assert options.headers["allow"] == allowed, path
            refused = await client.request("PATCH", path, headers=auth)
            assert refused.status_code == 405, path
            assert refused.headers["allow"] == allowed, path

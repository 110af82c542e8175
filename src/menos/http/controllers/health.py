"""Unauthenticated probes: liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, head
from litestar.openapi.datastructures import ResponseSpec

from menos import errors, versions
from menos.http import schemas, shared_read
from menos.queue import repository


@get("/health", sync_to_thread=False, security=[{}])
def health() -> schemas.Health:
    """Liveness and the running version."""
    return schemas.Health(status="ok", app_version=versions.app_version())


@get(
    "/ready",
    security=[{}],
    responses={503: ResponseSpec(schemas.Ready, description="Database down or schema outdated")},
)
async def ready(request: Request[Any, Any, Any]) -> Response[schemas.Ready]:
    """200 when the database answers and migrations are current, else 503."""
    return await _readiness(request)


# HEAD as well, as load balancers and uptime checks often probe: the same status, no body.
# Kept out of the schema, which documents the GET operations under their own ids.


@head("/health", sync_to_thread=False, include_in_schema=False)
def health_probe() -> None:
    """Liveness without a body."""


@head("/ready", include_in_schema=False)
async def ready_probe(request: Request[Any, Any, Any]) -> Response[None]:
    """Readiness without a body."""
    return Response(None, status_code=(await _readiness(request)).status_code)


def migrations_read() -> shared_read.SharedRead[list[int]]:
    """The database read behind a readiness probe, shared by the probes that come while it
    runs: a database that stopped answering gives 503 in seconds, not after the command
    timeout."""
    return shared_read.SharedRead(repository.Repository.pending_migrations)


async def _readiness(request: Request[Any, Any, Any]) -> Response[schemas.Ready]:
    repo: repository.Repository = request.app.state.repo
    migrations: shared_read.SharedRead[list[int]] = request.app.state.migrations_read
    try:
        pending = await migrations.result(repo)
    except errors.DatabaseUnavailable:
        return Response(
            schemas.Ready(status="unavailable", database="unreachable", pending_migrations=[]),
            status_code=503,
        )
    if pending:
        return Response(
            schemas.Ready(status="unavailable", database="outdated", pending_migrations=pending),
            status_code=503,
        )
    return Response(schemas.Ready(status="ok", database="ok", pending_migrations=[]))

"""Unauthenticated probes: liveness and readiness."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from menos import errors, versions
from menos.http import schemas, shared_read
from menos.queue import repository

log = structlog.get_logger("menos.http")


@get("/health", sync_to_thread=False, security=[{}])
def health() -> schemas.Health:
    """Liveness and the running version."""
    return _liveness()


@get(
    "/ready",
    security=[{}],
    responses={503: ResponseSpec(schemas.Ready, description="Database down or schema outdated")},
)
async def ready(request: Request[Any, Any, Any]) -> Response[schemas.Ready]:
    """200 when the database answers and migrations are current, else 503."""
    return await _readiness(request)


def _liveness() -> schemas.Health:
    return schemas.Health(status="ok", app_version=versions.app_version())


def readiness_read() -> shared_read.SharedRead[repository.Readiness]:
    """The database read behind a readiness probe, shared by the probes that come while it
    runs: a database that stopped answering gives 503 in seconds, not after the command
    timeout."""
    return shared_read.SharedRead(repository.Repository.readiness)


async def _readiness(request: Request[Any, Any, Any]) -> Response[schemas.Ready]:
    repo: repository.Repository = request.app.state.repo
    readiness: shared_read.SharedRead[repository.Readiness] = request.app.state.readiness_read
    try:
        found = await readiness.result(repo)
    except errors.DatabaseUnavailable:
        return _unready("unreachable")
    if found.pending_migrations:
        return _unready("outdated", found.pending_migrations)
    if found.mismatch is not None:  # workers refuse this database, and so would a new API
        log.warning("ready_schema_mismatch", error=found.mismatch)
        return _unready("mismatch")
    if found.read_only:  # every submission and every claim would fail
        return _unready("read_only")
    return Response(schemas.Ready(status="ok", database="ok", pending_migrations=[]))


def _unready(database: str, pending: list[int] | None = None) -> Response[schemas.Ready]:
    return Response(
        schemas.Ready(status="unavailable", database=database, pending_migrations=pending or []),
        status_code=503,
    )

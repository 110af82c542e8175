"""Unauthenticated probes: liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import HttpMethod, Request, Response, route
from litestar.openapi.datastructures import ResponseSpec

from menos import errors, versions
from menos.http import schemas
from menos.queue import repository

# HEAD too, as load balancers and uptime checks often probe: the same status, no body.
PROBE = [HttpMethod.GET, HttpMethod.HEAD]


@route("/health", http_method=PROBE, sync_to_thread=False, security=[{}])
def health() -> schemas.Health:
    """Liveness and the running version."""
    return schemas.Health(status="ok", app_version=versions.app_version())


@route(
    "/ready",
    http_method=PROBE,
    security=[{}],
    responses={503: ResponseSpec(schemas.Ready, description="Database down or schema outdated")},
)
async def ready(request: Request[Any, Any, Any]) -> Response[schemas.Ready]:
    """200 when the database answers and migrations are current, else 503."""
    repo: repository.Repository = request.app.state.repo
    try:
        pending = await repo.pending_migrations()
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

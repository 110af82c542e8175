"""The Litestar application: routes, error mapping, OpenAPI, and the pool's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from menos import db, versions
from menos.http import errors as http_errors
from menos.http import metrics, openapi, schemas
from menos.http.controllers import content, health, ingest, jobs
from menos.queue import repository
from menos.settings import Settings

# How long one database use of a request may take, connecting included. The API's are
# lookups by key and small writes that take milliseconds; one still waiting after this has met
# a database that stopped answering, and its client gets a 503 to retry, not a minute's wait.
DATABASE_DEADLINE_S = 10.0


def create_app(settings: Settings, *, pool: db.Pool | None = None) -> Litestar:
    """Build the API; without `pool` one is made from `settings.database_url` at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own_pool = pool is None
        if pool is None:
            assert settings.database_url, "create_app needs a pool or settings.database_url"
            used = await db.create_pool(
                settings.database_url,
                min_size=0,
                max_size=20,
                # The server ends a statement first (waiting on a lock, say), so that a 503 means
                # it did not run; the deadline still ends the wait on a silent database.
                statement_timeout_s=DATABASE_DEADLINE_S - 1,
            )
        else:
            used = pool
        app.state.repo = repository.Repository(used, db.Queries(), deadline_s=DATABASE_DEADLINE_S)
        try:
            yield
        finally:
            await asyncio.gather(  # each waits up to 1 s for its read to end
                app.state.queue_read.close(),
                app.state.finished_counts.close(),
                app.state.readiness_read.close(),
            )
            if own_pool:
                await db.close_pool(used)

    http_metrics = metrics.HttpMetrics()
    api = Litestar(
        route_handlers=[
            content.ContentController,
            jobs.JobsController,
            ingest.ingest,
            health.health,
            health.ready,
            metrics.metrics,
        ],
        request_class=schemas.JSONRequest,
        lifespan=[lifespan],
        exception_handlers=http_errors.HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        multipart_form_part_limit=content.MAX_FORM_PARTS,
        openapi_config=OpenAPIConfig(
            title="menos",
            version=versions.app_version(),
            path="/schema",
            openapi_router=openapi.schema_router("/schema"),
            components=openapi.COMPONENTS,
            security=openapi.SECURITY,
            render_plugins=[openapi.swagger_ui("/schema")],
        ),
        state=_state(settings, http_metrics),
        debug=False,
        logging_config=None,  # menos.logging configures logging for the whole process
    )
    # Around the router, not as route middleware: a path or method no route serves (404, 405)
    # is answered before any route's middleware would run, and must be counted too.
    # Litestar's own OPTIONS answer names the methods of the first handler registered on a
    # path (a controller registers its handlers one by one): `/api/v1/content` said GET but
    # not POST. The route table has them all.
    allowed = {
        path: b", ".join(sorted(str(method).encode() for method in served))
        for path, served in api.route_handler_method_map.items()
    }
    api.asgi_handler = http_metrics.middleware(_head_as_get(api.asgi_handler, allowed))
    openapi.declare_problem_headers(api.openapi_schema)
    return api


def _state(settings: Settings, http_metrics: metrics.HttpMetrics) -> Any:
    from litestar.datastructures import State

    return State(
        {
            "settings": settings,
            "http_metrics": http_metrics,
            "queue_read": metrics.queue_read(),
            "finished_counts": metrics.FinishedCounts(),
            "readiness_read": health.readiness_read(),
        }
    )


def _head_as_get(app: ASGIApp, allowed: dict[str, bytes]) -> ASGIApp:
    """HEAD wherever GET is served (RFC 9110 §9.3.2; load balancers and uptime checks probe
    with it): the GET's status and headers, its content-length included, and no body."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await app(scope, receive, _allowing_head(send, scope, allowed))
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The HTTP server reads the method from this scope to leave the body out
                # (httptools' protocol, unlike h11's, has no other record of it): told GET, it
                # waited for the body, failed the answer and reset the connection.
                scope["method"] = "HEAD"
            elif message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # In place, so that the route the app matched is seen by the metrics around it.
        scope["method"] = "GET"
        try:
            await app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"

    return serve


def _allowing_head(send: Send, scope: Scope, allowed: dict[str, bytes]) -> Send:
    """A 405's or OPTIONS answer's Allow header names HEAD where it names GET, and an OPTIONS
    answer's every method of its path (`allowed`, from the route table); the headers of other
    answers are passed on unread."""
    options = scope.get("method") == "OPTIONS"

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and (options or message["status"] == 405):
            headers = message.get("headers", [])
            handler = scope.get("route_handler")
            if options and message["status"] == 204 and handler is not None:
                served = next((allowed[path] for path in handler.paths if path in allowed), None)
                if served:
                    headers = [(n, served if n.lower() == b"allow" else v) for n, v in headers]
            message = {**message, "headers": [_head_allowed(*header) for header in headers]}
        await send(message)

    return sending


def _head_allowed(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """An Allow header with HEAD where it has GET, its methods in one order (a 405 and an
    OPTIONS answer of one path listed them in two)."""
    if name.lower() != b"allow":
        return name, value
    methods = {method.strip() for method in value.split(b",")}
    if b"GET" in methods:
        methods.add(b"HEAD")
    return name, b", ".join(sorted(methods))

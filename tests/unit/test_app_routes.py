"""How the routes are declared: nothing a request passes through runs in a worker thread, and
nothing is declared in a style Litestar 3.0 will no longer take."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from litestar.exceptions import LitestarDeprecationWarning
from litestar.handlers import HTTPRouteHandler

from menos import settings
from menos.http import app


def resolved_routes() -> list[tuple[HTTPRouteHandler, list[Any], dict[str, Any]]]:
    """Every route handler with its guards and dependencies, as the running API resolves them.

    Litestar warns of each deprecated (inferred) declaration as it builds or resolves a route;
    made an error here, whatever pytest's filters, a new one fails the suite by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", LitestarDeprecationWarning)
        api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
        resolved = [
            (handler, handler.resolve_guards(), handler.resolve_dependencies())
            for route in api.routes
            for handler in getattr(route, "route_handlers", [])
            if isinstance(handler, HTTPRouteHandler)
        ]
        api.openapi_schema.to_schema()
    assert len(resolved) > 10
    return resolved


def test_no_route_is_declared_in_a_deprecated_style() -> None:
    """Dependencies, path and query parameters and bodies are all marked explicitly."""
    resolved_routes()


def test_guards_dependencies_and_handlers_run_on_the_event_loop() -> None:
    """Every route's guards are coroutines, and no dependency or handler is run through
    Litestar's sync_to_thread."""
    resolved = resolved_routes()
    for handler, guards, dependencies in resolved:
        for guard in guards:
            assert inspect.iscoroutinefunction(guard), (handler.handler_name, guard)
        for name, provider in dependencies.items():
            assert not provider.has_sync_callable or not provider.sync_to_thread, name
        assert not (handler.has_sync_callable and handler.sync_to_thread), handler.handler_name


def test_the_schema_says_which_bodies_are_closed_or_optional() -> None:
    """Request bodies refuse unknown fields (additionalProperties false), and the reprocess
    body, which may be left out, is not marked required."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    schema = api.openapi_schema.to_schema()
    components = schema["components"]["schemas"]
    assert components["IngestRequest"]["additionalProperties"] is False
    assert components["ReprocessRequest"]["additionalProperties"] is False
    upload = schema["paths"]["/api/v1/content"]["post"]["requestBody"]
    assert upload["required"] is True
    assert all(m["schema"]["additionalProperties"] is False for m in upload["content"].values())
    reprocess = schema["paths"]["/api/v1/content/{content_id}/reprocess"]["post"]
    assert reprocess["requestBody"]["required"] is False
    ingest = schema["paths"]["/api/v1/ingest"]["post"]
    assert ingest["requestBody"]["required"] is True

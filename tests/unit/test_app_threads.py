"""Nothing a request passes through runs in a worker thread: each hop would cost a thread
switch and an event-loop wake-up per request."""

from __future__ import annotations

import inspect
import warnings

from litestar.exceptions import LitestarDeprecationWarning
from litestar.handlers import HTTPRouteHandler

from menos import settings
from menos.http import app


def test_guards_dependencies_and_handlers_run_on_the_event_loop() -> None:
    """Every route's guards are coroutines, and no dependency or handler is run through
    Litestar's sync_to_thread."""
    # Building the app and resolving its handlers warns of the explicit markers Litestar 3.0
    # will want; the running API warns the same way, out of sight of pytest.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LitestarDeprecationWarning)
        api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
        resolved = [
            (handler, handler.resolve_guards(), handler.resolve_dependencies())
            for route in api.routes
            for handler in getattr(route, "route_handlers", [])
            if isinstance(handler, HTTPRouteHandler)
        ]
    assert len(resolved) > 10
    for handler, guards, dependencies in resolved:
        for guard in guards:
            assert inspect.iscoroutinefunction(guard), (handler.handler_name, guard)
        for name, provider in dependencies.items():
            assert not provider.has_sync_callable or not provider.sync_to_thread, name
        assert not (handler.has_sync_callable and handler.sync_to_thread), handler.handler_name

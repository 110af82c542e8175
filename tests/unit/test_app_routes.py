"""How the routes are declared: nothing a request passes through runs in a worker thread,
nothing is declared in a style Litestar 3.0 will no longer take, and each answers the methods
its Allow header names."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from litestar.exceptions import LitestarDeprecationWarning
from litestar.handlers import HTTPRouteHandler
from litestar.testing import TestClient

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


def test_the_schema_states_the_length_limits_the_routes_check() -> None:
    """A client (or a generator of requests) reading the schema learns that a title holds at
    most 500 characters and a URL 2048, the limits past which the routes answer 400."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    schema = api.openapi_schema.to_schema()
    components = schema["components"]["schemas"]
    ingest = components["IngestRequest"]["properties"]
    limits = {"url": 2048, "title": 500, "callback_url": 2048}
    assert {name: ingest[name]["maxLength"] for name in limits} == limits
    assert components["ReprocessRequest"]["properties"]["callback_url"]["maxLength"] == 2048
    upload = schema["paths"]["/api/v1/content"]["post"]["requestBody"]["content"]
    form = upload["multipart/form-data"]["schema"]["properties"]
    assert (form["title"]["maxLength"], form["callback_url"]["maxLength"]) == (500, 2048)
    note = upload["application/json"]["schema"]["properties"]
    assert [s.get("maxLength") for s in note["title"]["oneOf"]] == [500, None]
    assert [s.get("maxLength") for s in note["callback_url"]["oneOf"]] == [2048, None]


def _answer_schema(schema: dict[str, Any], path: str, method: str, status: str) -> Any:
    """The JSON schema a route's answer must match, its references resolvable on their own."""
    import json

    import jsonschema_rs

    media = schema["paths"][path][method]["responses"][status]["content"]["application/json"]
    text = json.dumps({**media["schema"], "$defs": schema["components"]["schemas"]})
    return jsonschema_rs.Draft202012Validator(
        json.loads(text.replace("#/components/schemas/", "#/$defs/")), validate_formats=True
    )


def test_the_minimal_and_the_verbose_job_views_both_match_the_schema() -> None:
    """`GET /api/v1/jobs/{job_id}` answers a minimal or a verbose view: a client validating
    answers with the served schema accepts both (a verbose one matches the minimal view too,
    so `oneOf` would refuse it)."""
    import datetime as dt
    import uuid

    import msgspec

    from menos.http import schemas
    from menos.queue import models

    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    answer = _answer_schema(api.openapi_schema.to_schema(), "/api/v1/jobs/{job_id}", "get", "200")
    now = dt.datetime.now(dt.UTC)
    job = models.Job(
        job_id=models.JobId(uuid.uuid4()),
        content_id=models.ContentId(uuid.uuid4()),
        owner=models.Owner("alice"),
        resource_key="url:DxFdsGK3wN0DCxaH",
        status="completed",
        priority=0,
        attempts=1,
        worker_id="host:1:a",
        lease_expires_at=None,
        cancel_requested_at=None,
        current_stage="persist",
        stages=[models.StageTiming(name="fetch", started_at=now, finished_at=now, duration_ms=1.5)],
        data_tier="full",
        diagnostics={"analyzer": "builtin"},
        full_payload={"source_excerpt": "text"},
        error_code=None,
        error_stage=None,
        error_message=None,
        pipeline_version="0.1.0",
        callback_url=None,
        created_at=now,
        started_at=now,
        finished_at=now,
    )
    for view in (schemas.job_view(job), schemas.job_verbose_view(job, None)):
        body = msgspec.json.decode(msgspec.json.encode(view))
        errors = [e.message for e in answer.iter_errors(body)]
        assert not errors, (type(view).__name__, errors)


def test_the_schema_says_metrics_answer_prometheus_text() -> None:
    """`/metrics` is documented with the media type it is served with (Prometheus text)."""
    from menos.http import metrics

    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    answer = api.openapi_schema.to_schema()["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(answer["content"]) == [metrics.CONTENT_TYPE.split(";")[0]]


def test_the_schema_marks_every_problem_member_required() -> None:
    """A problem document always has `type`, `title`, `status`, `detail` and `errors`, and the
    schema says so: a client generated from it need not guess at absent members."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    components = api.openapi_schema.to_schema()["components"]["schemas"]
    assert sorted(components["Problem"]["required"]) == [
        "detail",
        "errors",
        "status",
        "title",
        "type",
    ]
    assert components["FieldError"]["required"] == ["field", "message"]


def test_each_route_documents_the_statuses_it_answers_and_no_other() -> None:
    """The schema lists, per route, the statuses it can answer: a body only where one is
    read (408, 413, 415), 404 only where an id is looked up, 409 only for cancel."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    paths = api.openapi_schema.to_schema()["paths"]
    documented = {
        (method.upper(), path): sorted(operation["responses"])
        for path, item in paths.items()
        for method, operation in item.items()
        if path.startswith("/api/v1/")
    }
    body = ["400", "401", "408", "413", "415", "503"]
    assert documented == {
        ("POST", "/api/v1/ingest"): sorted(["200", "202", *body]),
        ("POST", "/api/v1/content"): sorted(["202", *body]),
        ("POST", "/api/v1/content/{content_id}/reprocess"): sorted(["200", "202", "404", *body]),
        ("GET", "/api/v1/content"): ["200", "400", "401", "503"],
        ("GET", "/api/v1/jobs"): ["200", "400", "401", "503"],
        ("GET", "/api/v1/content/{content_id}"): ["200", "400", "401", "404", "503"],
        ("GET", "/api/v1/jobs/{job_id}"): ["200", "400", "401", "404", "503"],
        ("POST", "/api/v1/jobs/{job_id}/cancel"): ["200", "202", "400", "401", "404", "409", "503"],
    }


def test_the_schema_declares_the_headers_of_401_and_503_problems() -> None:
    """A 401 carries `WWW-Authenticate: Bearer` and a 503 problem `Retry-After`: a client
    built from the schema knows both are there to read."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    paths = api.openapi_schema.to_schema()["paths"]
    answers = [
        (status, answer)
        for item in paths.values()
        for operation in item.values()
        for status, answer in operation["responses"].items()
        if "application/problem+json" in answer.get("content", {})
    ]
    for wanted, header in (("401", "WWW-Authenticate"), ("503", "Retry-After")):
        declared = [
            set(answer.get("headers", {})) for status, answer in answers if status == wanted
        ]
        assert len(declared) >= 8 and all(header in names for names in declared), wanted
    ready = paths["/ready"]["get"]["responses"]["503"]
    assert "headers" not in ready  # the readiness report, not a problem: no Retry-After


def test_the_schema_lists_the_values_the_list_filters_accept() -> None:
    """The list routes refuse any other status or content type, and a limit outside 1-100:
    the schema says so, so a client built from it never sends what is refused."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    paths = api.openapi_schema.to_schema()["paths"]
    statuses = ["pending", "processing", "completed", "failed", "cancelled"]
    for path, filters in (
        ("/api/v1/jobs", {"status": statuses}),
        (
            "/api/v1/content",
            {"processing_status": statuses, "content_type": ["youtube", "web", "markdown"]},
        ),
    ):
        parameters = {p["name"]: p["schema"] for p in paths[path]["get"]["parameters"]}
        for name, allowed in filters.items():
            assert parameters[name]["enum"] == allowed, (path, name)
        assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, 100)


def test_the_schema_gives_the_default_page_size() -> None:
    """A list without `limit` answers 50 items (DESIGN §4): the schema says so, so a client
    built from it knows how many a page holds."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    paths = api.openapi_schema.to_schema()["paths"]
    for path in ("/api/v1/jobs", "/api/v1/content"):
        parameters = {p["name"]: p["schema"] for p in paths[path]["get"]["parameters"]}
        assert parameters["limit"].get("default") == 50, path


def test_the_schema_lists_the_values_of_each_answered_state() -> None:
    """Statuses, content types and tiers in answers are the documented values, listed in the
    schema as enums a client can switch on."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    components = api.openapi_schema.to_schema()["components"]["schemas"]
    statuses = {"pending", "processing", "completed", "failed", "cancelled"}

    def values(component: str, field: str) -> set[str]:
        schema = components[component]["properties"][field]
        return set(schema.get("enum") or [schema["const"]])

    for component, field in (
        ("JobView", "status"),
        ("JobVerboseView", "status"),
        ("ContentItem", "processing_status"),
        ("ContentView", "processing_status"),
        ("Submitted", "status"),
    ):
        assert values(component, field) == statuses, (component, field)
    for component in ("ContentItem", "ContentView", "Submitted"):
        assert values(component, "content_type") == {"youtube", "web", "markdown"}, component
    assert values("JobVerboseView", "data_tier") == {"compact", "full"}
    assert values("CallbackView", "status") == {"pending", "delivered", "failed"}
    assert values("CancelView", "status") == {"cancelled", "processing"}
    assert values("ReprocessView", "status") == {"submitted", "already_active", "already_completed"}


def test_the_upload_schema_takes_the_json_bodies_the_route_takes() -> None:
    """A JSON upload may send null for any field besides `text`, as the route accepts (and as
    ingest's schema says of its fields): the schema does not call such a body invalid."""
    import json

    import jsonschema_rs
    import msgspec

    from menos.http import schemas

    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    upload = api.openapi_schema.to_schema()["paths"]["/api/v1/content"]["post"]
    body_schema = upload["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator(json.loads(json.dumps(body_schema)))
    for body in (
        {"text": "x", "title": None, "tags": None, "callback_url": None, "data_tier": None},
        {"text": "x", "title": "t", "tags": ["a"], "data_tier": "full"},
    ):
        msgspec.convert(body, schemas.ContentText)  # the route takes it
        assert validator.is_valid(body), body
    assert not validator.is_valid({"text": None})


def test_allow_names_head_wherever_get_is_served() -> None:
    """HEAD is answered wherever GET is, but a 405's and an OPTIONS answer's Allow header
    said `GET, OPTIONS`: a client reading it would not try HEAD."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    with TestClient(api) as client:
        for method, path in (("PUT", "/health"), ("OPTIONS", "/metrics"), ("PUT", "/metrics")):
            allowed = client.request(method, path).headers["allow"]
            assert allowed == "GET, HEAD, OPTIONS", (method, path)
        assert client.delete("/api/v1/ingest").headers["allow"] == "OPTIONS, POST"
        cancel = "/api/v1/jobs/01a2159d-524a-7593-8d2b-6969448d34eb/cancel"
        assert client.get(cancel).headers["allow"] == "OPTIONS, POST"


def test_an_asset_path_the_disk_cannot_look_up_is_a_404() -> None:
    """A Swagger UI asset path with a NUL, a name too long for the file system or a path
    through a file answered 500 (no key needed); it is a 404 problem like any missing file."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    with TestClient(api) as client:
        assert client.get("/schema/swagger-assets/swagger-ui.css").status_code == 200
        for name in ("a%00b.js", "a" * 300, "swagger-ui.css/x", "nothing.js"):
            answer = client.get(f"/schema/swagger-assets/{name}")
            assert answer.status_code == 404, name
            assert answer.headers["content-type"] == "application/problem+json", name


def test_the_viewers_files_may_be_kept_by_a_browser() -> None:
    """Swagger UI's files were sent without Cache-Control: each visit of /schema/swagger
    fetched 1.5 MB anew."""
    api = app.create_app(settings.from_env({"MENOS_DATABASE_URL": "postgresql://u@h/x"}))
    with TestClient(api) as client:
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            answer = client.get(f"/schema/swagger-assets/{name}")
            assert answer.headers["cache-control"] == "max-age=3600, public", name
        assert "cache-control" not in client.get("/schema/openapi.json").headers

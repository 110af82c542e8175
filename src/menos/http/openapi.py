"""OpenAPI details Litestar cannot infer: error responses, the upload body, bearer security."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.static_files import create_static_files_router

from menos.http import errors as http_errors
from menos.http import validate


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=http_errors.Problem,
        description=description,
        media_type=http_errors.PROBLEM_JSON,
        generate_examples=False,
    )


async def _not_found_as_problem(response: Response[Any]) -> Response[Any]:
    """Litestar answers an unknown path under the schema's with an HTML page: every other
    unknown route is a problem document, so this one is too."""
    if response.status_code == 404 and response.media_type == MediaType.HTML:
        return http_errors.problem(404, "Not found", "Not Found")
    return response


def schema_router(path: str) -> Router:
    """The router Litestar adds the schema and its viewer to, with the viewer's files."""
    directory = _swagger_ui_files()
    assets = create_static_files_router(
        SWAGGER_ASSETS,
        directories=[directory],
        include_in_schema=False,
        before_request=_only_files_of(directory),
        cache_control=ASSET_CACHING,
    )
    return Router(
        path, route_handlers=[assets], include_in_schema=False, after_request=_not_found_as_problem
    )


SWAGGER_ASSETS = "/swagger-assets"
# The viewer's files change only when the installed swagger-ui-py does: a browser keeps them an
# hour instead of fetching its 1.5 MB again on every visit (Litestar's static files send an
# ETag but answer a conditional request with the whole file).
ASSET_CACHING = CacheControlHeader(public=True, max_age=3600)


def _only_files_of(directory: Path) -> Any:
    """A 404 for any asset path other than a file of `directory` (a flat directory), before
    Litestar looks it up on disk: a NUL in the path, a name over the system's limit or a path
    through a file (`swagger-ui.css/x`) made the lookup raise, and the API answer 500."""
    names = frozenset(entry.name for entry in directory.iterdir() if entry.is_file())

    async def check(request: Request[Any, Any, Any]) -> None:
        if str(request.path_params.get("file_path", "")).lstrip("/") not in names:
            raise NotFoundException("Not Found")

    return check


def swagger_ui(schema_path: str) -> SwaggerRenderPlugin:
    """Swagger UI at `{schema_path}/swagger`, its scripts, styles and icon served by the API
    itself (Litestar's default loads them from a CDN: a blank page without internet)."""
    files = f"{schema_path}{SWAGGER_ASSETS}"
    return SwaggerRenderPlugin(
        path="/swagger",
        favicon=f'<link rel="icon" type="image/png" href="{files}/favicon-32x32.png">',
        js_url=f"{files}/swagger-ui-bundle.js",
        css_url=f"{files}/swagger-ui.css",
        standalone_preset_js_url=f"{files}/swagger-ui-standalone-preset.js",
    )


def _swagger_ui_files() -> Path:
    # Found without importing the package, which would import its web-framework glue.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(spec.submodule_search_locations[0]) / "static"


__all__ = [
    "BODY_PROBLEMS",
    "ITEM_PROBLEMS",
    "LIST_PROBLEMS",
    "UPLOAD_FORM_FIELDS",
    "EitherViewOperation",
    "OptionalBodyOperation",
    "ResponseSpec",
    "UploadOperation",
    "declare_problem_headers",
    "problems",
    "schema_router",
    "swagger_ui",
]

_PROBLEMS: dict[int, ResponseSpec] = {
    400: _problem("Invalid input; `errors` names each invalid field"),
    401: _problem("Missing, unknown or revoked API key"),
    404: _problem("Unknown, or not visible to this key"),
    408: _problem("The request body did not arrive within 60 s"),
    409: _problem("The job is already terminal"),
    413: _problem("Request body over MENOS_MAX_BODY_BYTES"),
    415: _problem("Unsupported media type or encoding"),
    503: _problem("Database unavailable"),
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem answers of a route: those it can give, and no other."""
    return {status: _PROBLEMS[status] for status in statuses}


# The headers problem answers carry (errors.problem_response); ResponseSpec cannot say them.
_PROBLEM_HEADERS = {
    "401": {
        "WWW-Authenticate": OpenAPIHeader(
            description="`Bearer`: the scheme the API key is sent with",
            schema=Schema(type=OpenAPIType.STRING, const="Bearer"),
        )
    },
    "503": {
        "Retry-After": OpenAPIHeader(
            description="Seconds to wait before trying again",
            schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
        )
    },
}


def declare_problem_headers(document: OpenAPI) -> None:
    """Add to every problem answer of `document` the headers it is sent with."""
    for item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation: Operation | None = getattr(item, method)
            for status, headers in _PROBLEM_HEADERS.items():
                answer = (operation.responses or {}).get(status) if operation else None
                if isinstance(answer, OpenAPIResponse) and http_errors.PROBLEM_JSON in (
                    answer.content or {}
                ):
                    answer.headers = {**(answer.headers or {}), **headers}


# A list: a bad query parameter or cursor, no key, no database. Its body is never read.
LIST_PROBLEMS = problems(400, 401, 503)
# One item by its id: also an id that is not a UUID (400) and one not visible (404).
ITEM_PROBLEMS = problems(400, 401, 404, 503)
# A route that reads a body: also a body too slow (408), too large (413) or of another type (415).
BODY_PROBLEMS = problems(400, 401, 408, 413, 415, 503)

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
COMPONENTS = Components(
    security_schemes={
        "bearer": SecurityScheme(type="http", scheme="bearer", description="menos API key")
    }
)

_TEXT = Schema(type=OpenAPIType.STRING)
_TIER = Schema(type=OpenAPIType.STRING, enum=["compact", "full"])
_TAGS = Schema(type=OpenAPIType.ARRAY, items=_TEXT)
# The upload's fields besides its text (JSON `text`, form `file`); the route refuses any other.
_NOTE_FIELDS = {
    "title": Schema(type=OpenAPIType.STRING, max_length=validate.MAX_TITLE),
    "tags": _TAGS,
    "callback_url": Schema(type=OpenAPIType.STRING, max_length=validate.MAX_URL),
    "data_tier": _TIER,
}
UPLOAD_FORM_FIELDS = frozenset({"file", *_NOTE_FIELDS})
_NULLABLE_NOTE_FIELDS = {
    name: Schema(one_of=[schema, Schema(type=OpenAPIType.NULL)])
    for name, schema in _NOTE_FIELDS.items()
}


@dataclass
class UploadOperation(Operation):
    """`POST /api/v1/content`: a JSON note or a multipart file upload."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="A markdown note as JSON, or as a multipart `file` upload (UTF-8).",
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        additional_properties=False,
                        required=["text"],
                        # as ingest's: JSON may send null for a field it leaves out
                        properties={"text": _TEXT, **_NULLABLE_NOTE_FIELDS},
                    )
                ),
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        additional_properties=False,
                        required=["file"],
                        properties={
                            "file": Schema(type=OpenAPIType.STRING, format="binary"),  # type: ignore[arg-type]
                            **_NOTE_FIELDS,
                        },
                    )
                ),
            },
        )


@dataclass
class OptionalBodyOperation(Operation):
    """A route whose JSON body may be left out (Litestar marks every body required)."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


@dataclass
class EitherViewOperation(Operation):
    """`GET /api/v1/jobs/{job_id}`: the minimal view or the verbose one. The minimal view's
    schema allows more fields, so every verbose answer matches both: `anyOf`, where the `oneOf`
    Litestar writes for a union would call every verbose answer invalid."""

    def __post_init__(self) -> None:
        answer = (self.responses or {}).get("200")
        for media in (getattr(answer, "content", None) or {}).values():
            if isinstance(media.schema, Schema) and media.schema.one_of:
                media.schema.any_of, media.schema.one_of = media.schema.one_of, None

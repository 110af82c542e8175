"""OpenAPI details Litestar cannot infer: error responses, the upload body, bearer security."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Response, Router
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)

from menos.http import errors as http_errors


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
    """The router Litestar adds the schema and its viewer to."""
    return Router(
        path, route_handlers=[], include_in_schema=False, after_request=_not_found_as_problem
    )


__all__ = [
    "CONFLICT",
    "PROBLEMS",
    "UPLOAD_FORM_FIELDS",
    "OptionalBodyOperation",
    "ResponseSpec",
    "UploadOperation",
    "schema_router",
]

PROBLEMS: dict[int, ResponseSpec] = {
    400: _problem("Invalid input; `errors` names each invalid field"),
    401: _problem("Missing, unknown or revoked API key"),
    404: _problem("Unknown, or not visible to this key"),
    413: _problem("Request body over MENOS_MAX_BODY_BYTES"),
    415: _problem("Unsupported media type or encoding"),
    503: _problem("Database unavailable"),
}
CONFLICT = {409: _problem("The job is already terminal")}

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
_NOTE_FIELDS = {"title": _TEXT, "tags": _TAGS, "callback_url": _TEXT, "data_tier": _TIER}
UPLOAD_FORM_FIELDS = frozenset({"file", *_NOTE_FIELDS})


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
                        properties={"text": _TEXT, **_NOTE_FIELDS},
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

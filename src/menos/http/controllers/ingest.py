"""The ingest route: YouTube videos and web pages by URL, stored and enqueued, never fetched."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, post
from litestar.di import NamedDependency

from menos import versions
from menos.http import auth, openapi, schemas, validate
from menos.http import errors as http_errors
from menos.pipeline import resource_keys
from menos.queue import models, repository
from menos.settings import Settings


@post(
    "/api/v1/ingest",
    status_code=202,
    dependencies={"who": auth.PROVIDE},
    guards=[*auth.GUARDS, http_errors.require_json],
    before_request=validate.query_once,
    responses={**openapi.BODY_PROBLEMS, 200: openapi.ResponseSpec(schemas.Submitted)},
)
async def ingest(
    request: Request[Any, Any, Any],
    who: NamedDependency[models.Principal],
    data: Annotated[schemas.IngestRequest, schemas.CLOSED],
) -> Response[schemas.Submitted]:
    """Submit a URL: 202 with a new job, or 200 `deduplicated: true` for a known resource."""
    settings: Settings = request.app.state.settings
    body = data
    fields = validate.Fields()
    url = fields.check(
        lambda: validate.text("url", body.url, max_chars=validate.MAX_URL, required=True)
    )
    identified = fields.check(lambda: resource_keys.identify(body.url.strip())) if url else None
    transcript = fields.check(
        lambda: validate.text(
            "transcript_text", body.transcript_text, max_chars=settings.max_body_bytes
        )
    )
    title = fields.check(lambda: validate.text("title", body.title, max_chars=validate.MAX_TITLE))
    tags = fields.check(lambda: validate.tags(body.tags))
    callback_url = await fields.check_async(
        lambda: validate.callback_url(
            body.callback_url, allow_private=settings.callback_allow_private
        )
    )
    fields.raise_invalid()
    assert identified is not None and tags is not None
    repo: repository.Repository = request.app.state.repo
    enqueued = await repo.enqueue(
        models.NewContent(
            owner=who.owner,
            content_type=identified.content_type,
            resource_key=identified.resource_key,
            source_url=identified.source_url,
            title=title.strip() if title else None,
            tags=tags,
            body=transcript,
            source_metadata={"transcript_source": "supplied"} if transcript else {},
            callback_url=callback_url,
            data_tier=body.data_tier or settings.data_tier,
            pipeline_version=versions.app_version(),
        )
    )
    return Response(schemas.submitted(enqueued), status_code=200 if enqueued.deduplicated else 202)

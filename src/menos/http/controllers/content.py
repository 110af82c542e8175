"""Content routes: markdown upload, one item."""

from __future__ import annotations

import codecs
import itertools
import uuid
from typing import Annotated, Any

import multipart  # type: ignore[import-untyped]  # Litestar's form parser
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.params import FromPath, FromQuery, JSONBody

from menos import errors, markdown, versions
from menos.http import auth, openapi, pagination, schemas, validate
from menos.http import errors as http_errors
from menos.pipeline import result
from menos.queue import models, repository
from menos.settings import Settings

MAX_FORM_PARTS = 1000
# How Litestar says the form parser hit one of its limits (parts, header length or count);
# the parser's own message, which names the limit, is the exception's context.
FORM_LIMIT_REACHED = "Request Entity Too Large"


class ContentController(Controller):
    """`/api/v1/content`."""

    path = "/api/v1/content"
    guards = auth.GUARDS  # before the route's own guards, and before the body is read
    before_request = staticmethod(validate.query_once)
    dependencies = {"who": auth.PROVIDE}

    @post(
        "/",
        status_code=202,
        operation_class=openapi.UploadOperation,
        responses=openapi.BODY_PROBLEMS,
    )
    async def upload(
        self, request: Request[Any, Any, Any], who: NamedDependency[models.Principal]
    ) -> schemas.Submitted:
        """Upload a markdown note (JSON `{text, …}` or multipart with `file`); 202 with its job."""
        settings: Settings = request.app.state.settings
        http_errors.refuse_content_coding(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        filename: str | None = None
        if media == "application/json":
            body = schemas.decode(await request.body(), schemas.ContentText)
            raw, title, tag_values = body.text, body.title, body.tags or []
            callback, tier, text_field = body.callback_url, body.data_tier, "text"
        elif media == "multipart/form-data":
            try:
                await _refuse_other_charsets(request)
                form = await request.form()
            except UnicodeDecodeError:
                raise http_errors.UnsupportedMedia("form fields must be UTF-8 text") from None
            except ClientException as exc:
                # the body over MENOS_MAX_BODY_BYTES (413) has the same detail
                if exc.status_code != 400 or exc.detail != FORM_LIMIT_REACHED:
                    raise
                raise errors.InvalidInput("body", _form_limit(exc)) from None
            for name in form:
                if name not in openapi.UPLOAD_FORM_FIELDS:
                    raise errors.InvalidInput(name, http_errors.UNKNOWN_FIELD)
            upload = _one(form, "file")
            if isinstance(upload, str):
                # A part without a file name (`curl -F 'file=<note.md'`) is a text field:
                # the note itself, read as UTF-8 by the form parser.
                raw = upload
            elif isinstance(upload, UploadFile):
                if "\x00" in (upload.filename or ""):
                    raise errors.InvalidInput(
                        "file", "the file name must not contain NUL characters"
                    )
                filename = upload.filename or None
                data = await upload.read()
                try:
                    raw = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise http_errors.UnsupportedMedia(
                        "the file is not UTF-8 text", field="file"
                    ) from None
            else:
                raise errors.InvalidInput("file", "a markdown file is required")
            title = _form_text(_one(form, "title"), "title")
            tag_values = [_form_text(v, "tags") or "" for v in form.getall("tags", [])]
            callback = _form_text(_one(form, "callback_url"), "callback_url")
            tier_text = _form_text(_one(form, "data_tier"), "data_tier")
            if tier_text not in (None, "compact", "full"):
                raise errors.InvalidInput("data_tier", http_errors.DATA_TIERS)
            tier = tier_text  # type: ignore[assignment]
            text_field = "file"
        else:
            raise http_errors.UnsupportedMedia("send application/json or multipart/form-data")
        fields = validate.Fields()
        note_text = fields.check(
            lambda: validate.text(text_field, raw, max_chars=settings.max_body_bytes, required=True)
        )
        note = markdown.parse(note_text) if note_text is not None else None
        # The note's frontmatter tags are the note's field's faults, checked in its place.
        note_tags = fields.check(
            lambda: validate.note_tags(
                markdown.frontmatter_tags(note.metadata) if note is not None else [],
                note_field=text_field,
            )
        )
        title_text = fields.check(
            lambda: validate.text("title", title, max_chars=validate.MAX_TITLE)
        )
        request_tags = fields.check(lambda: validate.tags(tag_values, comma_separated=True))
        tags = (
            fields.check(lambda: validate.merged_tags(request_tags, note_tags))
            if request_tags is not None and note_tags is not None
            else None
        )
        callback_url = await fields.check_async(
            lambda: validate.callback_url(callback, allow_private=settings.callback_allow_private)
        )
        fields.raise_invalid()
        assert note_text is not None and note is not None and tags is not None
        chosen_title = markdown.choose_title(title_text, note, filename)
        repo: repository.Repository = request.app.state.repo
        enqueued = await repo.enqueue(
            models.NewContent(
                owner=who.owner,
                content_type="markdown",
                resource_key=None,
                source_url=None,
                title=(chosen_title or "")[: validate.MAX_TITLE] or None,
                tags=tags,
                body=note_text,
                source_metadata={"frontmatter": note.metadata} if note.metadata else {},
                callback_url=callback_url,
                data_tier=tier or settings.data_tier,
                pipeline_version=versions.app_version(),
            )
        )
        return schemas.submitted(enqueued)

    @get("/", responses=openapi.LIST_PROBLEMS)
    async def index(
        self,
        request: Request[Any, Any, Any],
        who: NamedDependency[models.Principal],
        processing_status: schemas.StatusFilter = None,
        content_type: schemas.ContentTypeFilter = None,
        tag: FromQuery[str | None] = None,
        limit: pagination.Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> pagination.PageView[schemas.ContentItem]:
        """Content newest first; filters `processing_status`, `content_type`, `tag`."""
        fields = validate.Fields()  # each invalid filter is named, not only the first
        fields.check(
            lambda: validate.choice("processing_status", processing_status, models.JOB_STATUSES)
        )
        fields.check(lambda: validate.choice("content_type", content_type, models.CONTENT_TYPES))
        wanted = fields.check(lambda: _tag_filter(tag))
        size = fields.check(lambda: pagination.limit(limit))
        after = fields.check(lambda: pagination.decode(cursor))
        fields.raise_invalid()
        assert size is not None
        repo: repository.Repository = request.app.state.repo
        page = await repo.list_content(
            owner=auth.scope(who),
            status=processing_status,
            content_type=content_type,
            tag=wanted,
            after=after,
            limit=size,
            # result tags are normalized (`Machine Learning` is `machine-learning`)
            result_tag=wanted and result.normalize_tag(wanted),
        )
        return pagination.PageView(
            items=[schemas.content_item(item) for item in page.items],
            next_cursor=pagination.encode(page.last),
        )

    @post(
        "/{content_id:str}/reprocess",
        status_code=202,
        guards=[http_errors.require_json],
        operation_class=openapi.OptionalBodyOperation,
        responses={
            **openapi.BODY_PROBLEMS,
            **openapi.problems(404),
            200: openapi.ResponseSpec(schemas.ReprocessView),
        },
    )
    async def reprocess(
        self,
        request: Request[Any, Any, Any],
        who: NamedDependency[models.Principal],
        content_id: FromPath[uuid.UUID],
        force: FromQuery[bool] = False,
        data: JSONBody[Annotated[schemas.ReprocessRequest, schemas.CLOSED] | None] = None,
    ) -> Response[schemas.ReprocessView]:
        """Run the pipeline again: 202 submitted, or 200 already_active / already_completed."""
        settings: Settings = request.app.state.settings
        body = data or schemas.ReprocessRequest()
        fields = validate.Fields()
        transcript = fields.check(
            lambda: validate.text(
                "transcript_text", body.transcript_text, max_chars=settings.max_body_bytes
            )
        )
        callback_url = await fields.check_async(
            lambda: validate.callback_url(
                body.callback_url, allow_private=settings.callback_allow_private
            )
        )
        fields.raise_invalid()
        repo: repository.Repository = request.app.state.repo
        outcome = await repo.reprocess(
            content_id,
            owner=auth.scope(who),
            force=force,
            pipeline_version=versions.app_version(),
            callback_url=callback_url,
            data_tier=body.data_tier or settings.data_tier,
            transcript=transcript,
            actor=auth.actor(who),
        )
        if outcome is None:
            raise errors.NotFound(f"no content {content_id}")
        view = schemas.ReprocessView(
            job_id=outcome.job_id, content_id=outcome.content_id, status=outcome.status
        )
        return Response(view, status_code=202 if outcome.status == "submitted" else 200)

    @get("/{content_id:str}", responses=openapi.ITEM_PROBLEMS)
    async def show(
        self,
        request: Request[Any, Any, Any],
        who: NamedDependency[models.Principal],
        content_id: FromPath[uuid.UUID],
    ) -> schemas.ContentView:
        """One content item with its result."""
        repo: repository.Repository = request.app.state.repo
        found = await repo.content(content_id, owner=auth.scope(who))
        if found is None:
            raise errors.NotFound(f"no content {content_id}")
        return schemas.content_view(found)


def _one(form: FormMultiDict, field: str) -> object:
    """The form's only value of `field` (None when absent); InvalidInput when given twice."""
    values = form.getall(field, [])
    if len(values) > 1:
        raise errors.InvalidInput(field, validate.GIVEN_TWICE)
    return values[0] if values else None


def _form_text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidInput(field, "must be a text field, not a file")
    return value


async def _refuse_other_charsets(request: Request[Any, Any, Any]) -> None:
    """A text field whose part declares a charset other than UTF-8 (or ASCII) is a 415 before
    Litestar's form parser decodes it with that charset on the event loop: the punycode and
    idna decoders take time quadratic in the field (600 KB took 28 s, the API stalled). The
    body (at most MENOS_MAX_BODY_BYTES) is kept for that parser, which reports a malformed
    form or one over its limits itself."""
    boundary = request.content_type[1].get("boundary")
    if not boundary:
        return
    body = await request.body()
    try:
        with multipart.PushMultipartParser(
            boundary.encode(), max_segment_count=MAX_FORM_PARTS
        ) as parser:
            # Each part as it comes: Litestar's parser decodes the parts before a malformed
            # one, so a fault further on must not skip the check of those.
            for event in itertools.chain(parser.parse(body), parser.parse(b"")):
                if (
                    isinstance(event, multipart.MultipartSegment)
                    and not event.filename
                    and event.charset  # `charset=""` names none: the parser reads UTF-8
                    and not _is_utf8(event.charset)
                ):
                    raise http_errors.UnsupportedMedia(
                        "form fields must be UTF-8 text", field=event.name
                    )
    except multipart.MultipartError:
        return


def _is_utf8(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name in ("utf-8", "ascii")
    except (LookupError, ValueError):  # ValueError: a name with a NUL (`charset="utf-8\0"`)
        return False


def _tag_filter(tag: str | None) -> str | None:
    """`?tag=`: trimmed as submitted tags are; a blank one is refused, as an empty value of
    the other filters is, rather than listing everything."""
    if tag is not None and not tag.strip():
        raise errors.InvalidInput("tag", "must not be blank")
    return validate.text("tag", tag and tag.strip(), max_chars=validate.MAX_TAG)


def _form_limit(exc: ClientException) -> str:
    """What a form over one of the parser's limits is told."""
    reason = str(exc.__context__ or "a limit of the form parser was reached").rstrip(".")
    hint = f" (at most {MAX_FORM_PARTS} parts)" if "segment count" in reason.lower() else ""
    return f"the form cannot be read: {reason[:1].lower()}{reason[1:]}{hint}"


__all__ = ["ContentController", "Response"]

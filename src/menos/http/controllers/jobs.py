"""Job routes: one job (minimal or verbose) and cancel."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from menos import errors
from menos.http import auth, openapi, pagination, schemas, validate
from menos.queue import models, repository


class JobsController(Controller):
    """`/api/v1/jobs`."""

    path = "/api/v1/jobs"
    guards = auth.GUARDS  # before the route's own guards, and before the body is read
    before_request = staticmethod(validate.query_once)
    dependencies = {"who": auth.PROVIDE}

    @get("/", responses=openapi.LIST_PROBLEMS)
    async def index(
        self,
        request: Request[Any, Any, Any],
        who: NamedDependency[models.Principal],
        status: schemas.StatusFilter = None,
        content_id: FromQuery[uuid.UUID | None] = None,
        limit: pagination.Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> pagination.PageView[schemas.JobView]:
        """Jobs newest first; filters `status` and `content_id`; `limit` and `cursor` page."""
        fields = validate.Fields()  # each invalid filter is named, not only the first
        fields.check(lambda: validate.choice("status", status, models.JOB_STATUSES))
        size = fields.check(lambda: pagination.limit(limit))
        after = fields.check(lambda: pagination.decode(cursor))
        fields.raise_invalid()
        assert size is not None
        repo: repository.Repository = request.app.state.repo
        page = await repo.list_jobs(
            owner=auth.scope(who),
            status=status,
            content_id=content_id,
            after=after,
            limit=size,
        )
        return pagination.PageView(
            items=[schemas.job_view(job) for job in page.items],
            next_cursor=pagination.encode(page.last),
        )

    @get(
        "/{job_id:str}",
        operation_class=openapi.EitherViewOperation,
        responses=openapi.ITEM_PROBLEMS,
    )
    async def show(
        self,
        request: Request[Any, Any, Any],
        who: NamedDependency[models.Principal],
        job_id: FromPath[uuid.UUID],
        verbose: FromQuery[bool] = False,
    ) -> schemas.JobView | schemas.JobVerboseView:
        """One job; `?verbose=true` adds stages, diagnostics, callback state (audited)."""
        repo: repository.Repository = request.app.state.repo
        job = await repo.job(job_id, owner=auth.scope(who))
        if job is None:
            raise errors.NotFound(f"no job {job_id}")
        if not verbose:
            return schemas.job_view(job)
        callback = await repo.callback(job.job_id)
        await repo.audit(  # stored before anything of the full tier is answered
            "audit.full_tier_access",
            owner=job.owner,
            actor_key_id=who.key_id,
            subject=job.job_id,
            detail={"data_tier": job.data_tier, "actor_owner": who.owner},
        )
        return schemas.job_verbose_view(job, callback)

    @post(
        "/{job_id:str}/cancel",
        status_code=200,
        responses={
            **openapi.ITEM_PROBLEMS,
            **openapi.problems(409),
            202: openapi.ResponseSpec(schemas.CancelView),
        },
    )
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        who: NamedDependency[models.Principal],
        job_id: FromPath[uuid.UUID],
    ) -> Response[schemas.CancelView]:
        """Cancel: pending → 200 cancelled; processing → 202 cancel requested; terminal → 409."""
        repo: repository.Repository = request.app.state.repo
        outcome = await repo.request_cancel(job_id, owner=auth.scope(who), actor=auth.actor(who))
        if outcome is None:
            raise errors.NotFound(f"no job {job_id}")
        if outcome.previous == "pending":
            return Response(schemas.CancelView(job_id=job_id, status="cancelled"), status_code=200)
        if outcome.previous == "processing":
            return Response(
                schemas.CancelView(job_id=job_id, status="processing", cancel_requested=True),
                status_code=202,
            )
        raise errors.Conflict(f"job {job_id} is already {outcome.previous}")

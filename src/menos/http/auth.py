"""Bearer API-key authentication: who is calling, and which owner's items they may see."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler

from menos import errors
from menos.queue import models, repository

_KEY = re.compile(r"[A-Za-z0-9_-]{8,200}")


async def authenticate(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Route guard: the caller behind `Authorization: Bearer <key>`, kept for `principal`;
    401 when missing, unknown or revoked. Guards run before the body is read, so an
    unauthenticated request is answered 401 whatever its body, which is never decoded."""
    given = connection.headers.getall("authorization", [])
    if len(given) > 1:  # a proxy and the API could each read a different one
        raise errors.Unauthorized("send one Authorization header, not several")
    header = given[0] if given else ""
    scheme, _, key = header.partition(" ")
    key = key.strip(" \t")  # HTTP's optional whitespace; no other character is a key's
    if scheme.lower() != "bearer" or not key:
        raise errors.Unauthorized("send Authorization: Bearer <api key>")
    repo: repository.Repository = connection.app.state.repo
    # A key that cannot be one of ours is not looked up (nor hashed, at any length).
    found = await repo.principal(key) if _KEY.fullmatch(key) else None
    if found is None:
        raise errors.Unauthorized("unknown or revoked API key")
    connection.state.principal = found


async def principal(request: Request[Any, Any, Any]) -> models.Principal:
    """The caller the `authenticate` guard found (the guard must be on the route)."""
    found: models.Principal = request.state.principal
    return found


def scope(who: models.Principal) -> str | None:
    """The owner filter for queries: None (everything) for admins."""
    return None if who.is_admin else who.owner


PROVIDE = Provide(principal)
GUARDS = [authenticate]


def actor(who: models.Principal) -> repository.Actor:
    """The caller as the audit trail names it."""
    return repository.Actor(key_id=who.key_id, detail={"actor_owner": who.owner})

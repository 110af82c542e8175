"""Bearer API-key authentication: who is calling, and which owner's items they may see."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.di import Provide

from menos import errors
from menos.queue import models, repository

_KEY = re.compile(r"^[A-Za-z0-9_-]{8,200}$")


async def principal(request: Request[Any, Any, Any]) -> models.Principal:
    """The caller behind `Authorization: Bearer <key>`; 401 when missing, unknown or revoked."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not _KEY.match(key):
        raise errors.Unauthorized("send Authorization: Bearer <api key>")
    repo: repository.Repository = request.app.state.repo
    found = await repo.principal(key)
    if found is None:
        raise errors.Unauthorized("unknown or revoked API key")
    return found


def scope(who: models.Principal) -> str | None:
    """The owner filter for queries: None (everything) for admins."""
    return None if who.is_admin else who.owner


PROVIDE = Provide(principal)

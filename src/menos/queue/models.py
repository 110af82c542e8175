"""Frozen domain structs the repository returns: jobs, content, keys, outbox events."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from typing import Any, Literal, NewType

import msgspec

JobId = NewType("JobId", uuid.UUID)
ContentId = NewType("ContentId", uuid.UUID)
Owner = NewType("Owner", str)

JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("pending", "processing", "completed", "failed", "cancelled")
ContentType = Literal["youtube", "web", "markdown"]
CONTENT_TYPES: tuple[ContentType, ...] = ("youtube", "web", "markdown")
DataTier = Literal["compact", "full"]
Role = Literal["user", "admin"]


def new_id() -> uuid.UUID:
    """A time-ordered UUID (version 7 layout): ids sort by creation time."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 random bits
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class StageTiming(msgspec.Struct, frozen=True):
    """When one stage of a run started and finished."""

    name: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    duration_ms: float | None = None


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the pipeline over one content item."""

    job_id: JobId
    content_id: ContentId
    owner: Owner
    resource_key: str
    status: JobStatus
    priority: int
    attempts: int
    worker_id: str | None
    lease_expires_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None
    current_stage: str | None
    stages: list[StageTiming]
    data_tier: DataTier
    diagnostics: dict[str, Any]
    full_payload: dict[str, Any] | None
    error_code: str | None
    error_stage: str | None
    error_message: str | None
    pipeline_version: str
    callback_url: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class Content(msgspec.Struct, frozen=True, kw_only=True):
    """One ingested item of one owner."""

    content_id: ContentId
    owner: Owner
    content_type: ContentType
    resource_key: str
    source_url: str | None
    title: str | None
    tags: list[str]
    body: str | None
    source_metadata: dict[str, Any]
    processing_status: JobStatus
    processed_at: dt.datetime
    pipeline_version: str
    result: dict[str, Any] | None
    latest_job_id: JobId | None
    created_at: dt.datetime
    updated_at: dt.datetime


class Callback(msgspec.Struct, frozen=True, kw_only=True):
    """The delivery state of a job's callback event."""

    event_id: uuid.UUID
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None


class OutboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A callback event claimed for one delivery attempt."""

    event_id: uuid.UUID
    job_id: JobId
    owner: Owner
    url: str
    payload: str  # the exact JSON body, identical on every attempt
    attempts: int  # the number of the attempt being made (counted as its request goes out)
    created_at: dt.datetime


class Principal(msgspec.Struct, frozen=True):
    """The owner and role behind an API key."""

    key_id: uuid.UUID
    owner: Owner
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as listed (never the key itself)."""

    key_id: uuid.UUID
    owner: Owner
    role: Role
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class Claimed(msgspec.Struct, frozen=True):
    """A job a worker now holds, with its content."""

    job: Job
    content: Content


class Enqueued(msgspec.Struct, frozen=True, kw_only=True):
    """What an ingest or upload produced: a new job, or the one already known."""

    job_id: JobId | None
    content_id: ContentId
    content_type: ContentType
    resource_key: str
    status: JobStatus
    deduplicated: bool


class NewContent(msgspec.Struct, frozen=True, kw_only=True):
    """A submission to store and enqueue."""

    owner: Owner
    content_type: ContentType
    resource_key: str | None  # None for markdown: becomes cid:<content_id>
    source_url: str | None
    title: str | None
    tags: list[str]
    body: str | None
    source_metadata: dict[str, Any]
    callback_url: str | None
    data_tier: DataTier
    pipeline_version: str
    priority: int = 0

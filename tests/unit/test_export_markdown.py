"""The markdown export's YAML frontmatter parses back to the item's data."""

from __future__ import annotations

import datetime as dt
import uuid

import yaml

from menos import tools
from menos.queue import models


def test_frontmatter_keeps_characters_yaml_reads_as_line_breaks() -> None:
    """A title or tag with NEL (U+0085), U+2028 or U+2029 reads back unchanged, not folded."""
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    title = "Line\x85Two"
    content = models.Content(
        content_id=models.ContentId(uuid.uuid4()),
        owner=models.Owner("alice"),
        content_type="markdown",
        resource_key="cid:x",
        source_url=None,
        title=title,
        tags=["a\x85b"],
        body=None,
        source_metadata={},
        processing_status="completed",
        processed_at=now,
        pipeline_version="0.1.0",
        result={"summary": "s", "tags": ["plain"]},
        latest_job_id=None,
        created_at=now,
        updated_at=now,
    )
    front = yaml.safe_load(tools.markdown_document(content).split("---\n")[1])
    assert front["title"] == title
    assert front["tags"] == ["a\x85b", "plain"]
    assert front["processed_at"] == now.isoformat()

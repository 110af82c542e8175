-- Listings of everyone's content, newest first: an admin's GET /api/v1/content and
-- `bin/export-summaries` without --owner.
--
-- Only content_owner_created had that order, behind its owner column: each page of such a
-- listing read and sorted the whole table (80 ms a page at 200,000 items), so an export of
-- everything took time quadratic in the table (177 s for 162,000 items). Building this
-- index holds writes to menos.content for as long as it takes (under a second per 500,000
-- rows on a small machine).

CREATE INDEX content_created ON menos.content (created_at DESC, content_id DESC);

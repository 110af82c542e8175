-- A content item's tags hold no NULL.
--
-- Every tag menos writes is a non-blank string, but the column, a text[], takes a NULL element
-- too (psql: `UPDATE menos.content SET tags = array_append(tags, NULL) …`). Such a row made its
-- item and every page of the content list holding it a 500, and its export fail. The database
-- now refuses it; the NULLs such UPDATEs already left are dropped first.

UPDATE menos.content
   SET tags = array_remove(tags, NULL)
 WHERE array_position(tags, NULL) IS NOT NULL;

ALTER TABLE menos.content
    ADD CONSTRAINT content_tags_hold_no_null CHECK (array_position(tags, NULL) IS NULL);

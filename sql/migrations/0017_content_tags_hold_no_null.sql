-- A content item's tags are a flat list without NULL.
--
-- Every tag menos writes is a non-blank string, but the column, a text[], also takes a NULL
-- element or a second dimension (psql: `UPDATE menos.content SET tags = array_append(tags,
-- NULL) …`, `SET tags = '{{a,b},{c,d}}'`). Such a row made its item and every page of the
-- content list holding it a 500, and its export fail. The database now refuses it; rows such
-- UPDATEs already left keep their tags, flattened in order, without the NULLs.

UPDATE menos.content
   SET tags = ARRAY(SELECT tag FROM unnest(tags) WITH ORDINALITY AS t (tag, n)
                     WHERE tag IS NOT NULL ORDER BY n)
 WHERE array_ndims(tags) > 1 OR EXISTS (SELECT 1 FROM unnest(tags) AS t (tag) WHERE tag IS NULL);

ALTER TABLE menos.content
    ADD CONSTRAINT content_tags_hold_no_null
        CHECK (CASE WHEN array_ndims(tags) > 1 THEN false
                    ELSE array_position(tags, NULL) IS NULL END);

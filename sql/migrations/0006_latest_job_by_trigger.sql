-- A submission no longer pays for a deferred foreign-key check at commit (one internal query
-- per content row; docs/performance.md). content.latest_job_id is set only together with the
-- job it names (enqueue, reprocess), so the constraint's one remaining duty was ON DELETE SET
-- NULL; a statement trigger on job deletion now does it, for the purge and for any other
-- DELETE alike.

ALTER TABLE menos.content DROP CONSTRAINT content_latest_job_fk;

CREATE FUNCTION menos.forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE menos.content c SET latest_job_id = NULL
      FROM deleted_jobs d
     WHERE c.content_id = ANY (ARRAY(SELECT content_id FROM deleted_jobs))  -- as in 0005
       AND c.content_id = d.content_id AND c.latest_job_id = d.job_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER pipeline_job_forget_deleted AFTER DELETE ON menos.pipeline_job
    REFERENCING OLD TABLE AS deleted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION menos.forget_deleted_jobs();

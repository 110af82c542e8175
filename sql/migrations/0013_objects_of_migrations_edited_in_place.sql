-- Databases migrated before checksums were kept (0004 to 0006 were edited in place then)
-- may hold an earlier text of those migrations: the runner recorded today's checksum for
-- each, and nothing changed their objects. A database migrated while 0004 made the status
-- trigger a row trigger still had one, over today's function that reads the statement's
-- transition tables, so every status change failed (`relation "new_jobs" does not exist`);
-- later texts of 0005 and 0006 disabled sequential scans in the triggers and kept the
-- leases index on `status = 'processing'`. Each object is made again as the files define
-- it now; in a database that has them already, nothing changes but the triggers' functions
-- being replaced by their own text.

DO $$
BEGIN
    IF pg_get_indexdef('menos.pipeline_job_leases'::regclass)
       NOT LIKE '%WHERE (lease_expires_at IS NOT NULL)' THEN
        DROP INDEX menos.pipeline_job_leases;
        CREATE INDEX pipeline_job_leases ON menos.pipeline_job (lease_expires_at)
            WHERE lease_expires_at IS NOT NULL;
    END IF;
END
$$;

-- As in 0005.
CREATE OR REPLACE FUNCTION menos.on_job_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written integer;
BEGIN
    WITH changed AS (
        SELECT n.*
          FROM new_jobs n JOIN old_jobs o USING (job_id)
         WHERE n.status IS DISTINCT FROM o.status
    ), mirrored AS (
        UPDATE menos.content c
           SET processing_status = ch.status, processed_at = now(), updated_at = now()
          FROM changed ch
         WHERE c.content_id = ANY (ARRAY(SELECT content_id FROM changed))
           AND c.content_id = ch.content_id AND c.latest_job_id = ch.job_id
           AND c.processing_status IS DISTINCT FROM ch.status
    ), ended AS (
        -- The content's result is read row by row (the snapshot is the statement's, so a
        -- completion's result is there and the mirror above does not show).
        SELECT ch.*, gen_random_uuid() AS event_id,
               (SELECT c.result FROM menos.content c
                 WHERE c.content_id = ch.content_id AND c.latest_job_id = ch.job_id) AS result
          FROM changed ch
         WHERE ch.status IN ('completed', 'failed', 'cancelled') AND ch.callback_url IS NOT NULL
    ), events AS (
        INSERT INTO menos.callback_outbox (event_id, job_id, owner, event_type, url, payload)
        SELECT event_id, job_id, owner, 'job.' || status, callback_url,
               jsonb_build_object(
                   'schema_version', '1',
                   'event_id', event_id,
                   'type', 'job.' || status,
                   'created_at', menos.rfc3339(now()),
                   'data', jsonb_build_object(
                       'job_id', job_id,
                       'content_id', content_id,
                       'resource_key', resource_key,
                       'status', status,
                       'pipeline_version', pipeline_version,
                       'error_code', error_code,
                       'error_stage', error_stage,
                       'error_message', error_message,
                       'created_at', menos.rfc3339(created_at),
                       'started_at', menos.rfc3339(started_at),
                       'finished_at', menos.rfc3339(finished_at),
                       'result_summary', CASE
                           WHEN status = 'completed' AND result IS NOT NULL THEN
                               jsonb_build_object(
                                   'summary', result -> 'summary',
                                   'tags', result -> 'tags',
                                   'tier', result -> 'tier',
                                   'quality_score', result -> 'quality_score')
                           ELSE NULL
                       END))
          FROM ended
        RETURNING 1
    )
    SELECT count(*) INTO written FROM events;
    IF written > 0 THEN
        PERFORM pg_notify('menos_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- As in 0006.
CREATE OR REPLACE FUNCTION menos.forget_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE menos.content c SET latest_job_id = NULL
      FROM deleted_jobs d
     WHERE c.content_id = ANY (ARRAY(SELECT content_id FROM deleted_jobs))  -- as in 0005
       AND c.content_id = d.content_id AND c.latest_job_id = d.job_id;
    RETURN NULL;
END
$$;

DROP TRIGGER pipeline_job_status ON menos.pipeline_job;
CREATE TRIGGER pipeline_job_status AFTER UPDATE ON menos.pipeline_job
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION menos.on_job_status();

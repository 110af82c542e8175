-- A claim, the status trigger and the count of running jobs touch only the rows they need,
-- whatever the size of the tables and however stale their statistics (docs/performance.md).
--
-- Joined to a batch of 100, a table of a few thousand rows looked cheaper to read whole
-- (hash or merge join) than through a hundred index lookups, so every batched claim and
-- completion read all of content and pipeline_job: about 60 µs of database CPU per job. Rows
-- to update are now named by an id array (an index condition); rows only read, by a subquery
-- per row. Event ids are drawn only for the events written.
--
-- After a VACUUM of an idle queue the partial indexes are recorded as empty, and until the
-- next ANALYZE the planner answered "how many jobs are running" through
-- pipeline_job_one_active, reading every pending job. The leases index now holds exactly the
-- rows with a lease (only a processing job has one: every write that ends or returns a run
-- clears it), and the count asks for running jobs in a form only that index can answer.
-- Bodies otherwise as in 0004 (migrations are forward-only).

DROP INDEX menos.pipeline_job_leases;
CREATE INDEX pipeline_job_leases ON menos.pipeline_job (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;

CREATE OR REPLACE FUNCTION menos.claim_jobs(
    p_worker text, p_limit integer, p_max integer, p_lease_s double precision,
    p_now timestamptz, p_version text
) RETURNS TABLE (job menos.pipeline_job, content menos.content)
LANGUAGE plpgsql AS $$
DECLARE
    free integer;
    at timestamptz := coalesce(p_now, now());
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('menos.claim_jobs'));
    -- Running jobs are the ones holding a lease. Asked that way, only the small
    -- pipeline_job_leases index can answer (a status condition would let the index of active
    -- jobs, pending ones included, answer too), and a range on the lease keeps the estimate
    -- small enough that a table never analyzed is not read whole instead. The limit bounds it.
    SELECT p_max - count(*) INTO free
      FROM (SELECT 1 FROM menos.pipeline_job WHERE lease_expires_at > '-infinity'
             LIMIT p_max) AS processing;
    IF least(free, p_limit) <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT job_id FROM menos.pipeline_job
         WHERE status = 'pending'
         ORDER BY priority, created_at, job_id
         LIMIT least(free, p_limit)
         FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE menos.pipeline_job j
           SET status = 'processing', attempts = j.attempts + 1, worker_id = p_worker,
               lease_expires_at = at + make_interval(secs => p_lease_s),
               started_at = at, current_stage = NULL, stages = '[]', pipeline_version = p_version,
               error_code = NULL, error_stage = NULL, error_message = NULL
         WHERE j.job_id = ANY (ARRAY(SELECT job_id FROM picked))
        RETURNING j
    )
    SELECT claimed.j,
           (SELECT c FROM menos.content c WHERE c.content_id = (claimed.j).content_id)
      FROM claimed
     ORDER BY (claimed.j).priority, (claimed.j).created_at, (claimed.j).job_id;
END
$$;

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

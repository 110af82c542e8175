-- Fewer round trips, commits, statements and row versions per job (docs/performance.md):
-- a claim returns each job with its content and does not wait for a WAL flush, the status
-- trigger runs once per statement, and a completion writes its content row once.

DROP FUNCTION menos.claim_jobs(text, integer, integer, double precision, timestamptz, text);

-- Claim up to p_limit pending jobs for one worker without ever letting more than p_max jobs be
-- processing across all workers, and return each with its content row. The advisory lock
-- serializes claimers, and the count and the claim run as statements of their own after it,
-- so their snapshots see every claim committed before the lock (and every claimed job's
-- content, committed with or before the job).
--
-- The claim's commit does not wait for its WAL flush: a claim lost in a server crash leaves
-- the job pending with its attempt uncounted, and every later write of the worker that ran it
-- is refused by the (job, worker, attempts) guard. The lock is released at commit, so claimers
-- no longer queue behind each other's flushes.
CREATE FUNCTION menos.claim_jobs(
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
    -- The lease condition keeps the count on the small pipeline_job_leases index whatever
    -- the statistics say (every processing job has a lease), and the limit bounds it.
    SELECT p_max - count(*) INTO free
      FROM (SELECT 1 FROM menos.pipeline_job
             WHERE status = 'processing' AND lease_expires_at > '-infinity'
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
          FROM picked
         WHERE j.job_id = picked.job_id
        RETURNING j
    )
    SELECT claimed.j, c
      FROM claimed JOIN menos.content c ON c.content_id = (claimed.j).content_id
     ORDER BY (claimed.j).priority, (claimed.j).created_at, (claimed.j).job_id;
END
$$;

-- The status trigger becomes one per statement over its transition tables: a claim or a
-- completion of many jobs mirrors their content rows and writes their outbox events in one
-- statement each, not one per job. A content row already showing the job's status (a
-- completion writes its result and status together) is left alone: one write per completion.
-- Every terminal transition of a job with a callback_url still writes its outbox event in the
-- transaction that made it.
DROP TRIGGER pipeline_job_status ON menos.pipeline_job;
DROP FUNCTION menos.on_job_status();

CREATE FUNCTION menos.on_job_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written integer;
BEGIN
    WITH changed AS (
        SELECT n.*, gen_random_uuid() AS event_id
          FROM new_jobs n JOIN old_jobs o USING (job_id)
         WHERE n.status IS DISTINCT FROM o.status
    ), mirrored AS (
        UPDATE menos.content c
           SET processing_status = ch.status, processed_at = now(), updated_at = now()
          FROM changed ch
         WHERE c.content_id = ch.content_id AND c.latest_job_id = ch.job_id
           AND c.processing_status IS DISTINCT FROM ch.status
    ), events AS (
        INSERT INTO menos.callback_outbox (event_id, job_id, owner, event_type, url, payload)
        SELECT ch.event_id, ch.job_id, ch.owner, 'job.' || ch.status, ch.callback_url,
               jsonb_build_object(
                   'schema_version', '1',
                   'event_id', ch.event_id,
                   'type', 'job.' || ch.status,
                   'created_at', menos.rfc3339(now()),
                   'data', jsonb_build_object(
                       'job_id', ch.job_id,
                       'content_id', ch.content_id,
                       'resource_key', ch.resource_key,
                       'status', ch.status,
                       'pipeline_version', ch.pipeline_version,
                       'error_code', ch.error_code,
                       'error_stage', ch.error_stage,
                       'error_message', ch.error_message,
                       'created_at', menos.rfc3339(ch.created_at),
                       'started_at', menos.rfc3339(ch.started_at),
                       'finished_at', menos.rfc3339(ch.finished_at),
                       'result_summary', CASE
                           WHEN ch.status = 'completed' AND c.result IS NOT NULL THEN
                               jsonb_build_object(
                                   'summary', c.result -> 'summary',
                                   'tags', c.result -> 'tags',
                                   'tier', c.result -> 'tier',
                                   'quality_score', c.result -> 'quality_score')
                           ELSE NULL
                       END))
          FROM changed ch
          LEFT JOIN menos.content c
            ON c.content_id = ch.content_id AND c.latest_job_id = ch.job_id
         WHERE ch.status IN ('completed', 'failed', 'cancelled') AND ch.callback_url IS NOT NULL
        RETURNING 1
    )
    SELECT count(*) INTO written FROM events;
    IF written > 0 THEN
        PERFORM pg_notify('menos_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER pipeline_job_status AFTER UPDATE ON menos.pipeline_job
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION menos.on_job_status();

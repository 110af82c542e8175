-- Fewer round trips, commits and row versions per job (docs/performance.md):
-- a claim returns each job with its content and does not wait for a WAL flush, and a
-- completion that already mirrored its status onto the content is not written twice.

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

-- As in 0001, except that a content row already showing the job's status is left alone: a
-- completion writes its result and status in one update of the content row, not two.
CREATE OR REPLACE FUNCTION menos.on_job_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    content_result jsonb;
BEGIN
    UPDATE menos.content
       SET processing_status = NEW.status, processed_at = now(), updated_at = now()
     WHERE content_id = NEW.content_id AND latest_job_id = NEW.job_id
       AND processing_status IS DISTINCT FROM NEW.status;

    IF NEW.status IN ('completed', 'failed', 'cancelled') AND NEW.callback_url IS NOT NULL THEN
        IF NEW.status = 'completed' THEN
            SELECT result INTO content_result FROM menos.content
             WHERE content_id = NEW.content_id AND latest_job_id = NEW.job_id;
        END IF;
        INSERT INTO menos.callback_outbox (event_id, job_id, owner, event_type, url, payload)
        SELECT e.id, NEW.job_id, NEW.owner, 'job.' || NEW.status, NEW.callback_url,
               jsonb_build_object(
                   'schema_version', '1',
                   'event_id', e.id,
                   'type', 'job.' || NEW.status,
                   'created_at', menos.rfc3339(now()),
                   'data', jsonb_build_object(
                       'job_id', NEW.job_id,
                       'content_id', NEW.content_id,
                       'resource_key', NEW.resource_key,
                       'status', NEW.status,
                       'pipeline_version', NEW.pipeline_version,
                       'error_code', NEW.error_code,
                       'error_stage', NEW.error_stage,
                       'error_message', NEW.error_message,
                       'created_at', menos.rfc3339(NEW.created_at),
                       'started_at', menos.rfc3339(NEW.started_at),
                       'finished_at', menos.rfc3339(NEW.finished_at),
                       'result_summary', CASE
                           WHEN NEW.status = 'completed' AND content_result IS NOT NULL THEN
                               jsonb_build_object(
                                   'summary', content_result -> 'summary',
                                   'tags', content_result -> 'tags',
                                   'tier', content_result -> 'tier',
                                   'quality_score', content_result -> 'quality_score')
                           ELSE NULL
                       END))
          FROM (SELECT gen_random_uuid() AS id) AS e;
        PERFORM pg_notify('menos_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

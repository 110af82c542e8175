-- The claim's count of running jobs reads the leases index, whatever the statistics
-- (docs/performance.md).
--
-- Until the first ANALYZE of a table filled in one go (a fresh install, a burst of
-- submissions), the planner guesses that a third of the rows match `lease_expires_at >
-- '-infinity'`, and under `LIMIT p_max` a sequential scan that stops at the p_max-th match
-- looked cheapest. No job is running when a worker is idle, so that scan read the whole
-- table on every claim: about 1 ms per claim with 10,000 jobs, more than the claim itself.
-- Asking for the rows in lease order leaves the index as the only plan that does not sort
-- them all. Body otherwise as in 0005 (migrations are forward-only).

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
    -- Running jobs are the ones holding a lease, read in lease order: only the small
    -- pipeline_job_leases index gives that order, so no estimate makes reading the table
    -- cheaper (see the header). The limit bounds it.
    SELECT p_max - count(*) INTO free
      FROM (SELECT 1 FROM menos.pipeline_job WHERE lease_expires_at > '-infinity'
             ORDER BY lease_expires_at LIMIT p_max) AS processing;
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

-- Three builds applied earlier texts of 0011 and 0012, which were edited after checksums were
-- kept; the runner accepts those texts (db.SUPERSEDED) and this brings their objects to what
-- the files define now. In a database migrated by today's files nothing changes but the
-- claim function being replaced by its own text.
--
-- * 0011's first text counted `recorded_attempts` (every event, NOT NULL) where today's marks
--   the one `unrecorded_attempt` (NULL but while an outcome is awaited). Events counted
--   under the old column are taken as recorded, as today's 0011 takes events older than it.
-- * 0012's first text replaced 0007's claim function in place; its second made the claim of
--   today (taking p_inline_bytes) with a filter that could lock every pending job's content
--   row per claim. Today's claim is made again. The six-argument form stays as the database
--   has it: the workers of the build that migrated it call that one until they restart.

ALTER TABLE menos.callback_outbox DROP COLUMN IF EXISTS recorded_attempts;
ALTER TABLE menos.callback_outbox ADD COLUMN IF NOT EXISTS unrecorded_attempt integer;

-- As in 0012.
CREATE OR REPLACE FUNCTION menos.claim_jobs(
    p_worker text, p_limit integer, p_max integer, p_lease_s double precision,
    p_now timestamptz, p_version text, p_inline_bytes integer
) RETURNS TABLE (job menos.pipeline_job, content menos.content, body_omitted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    free integer;
    at timestamptz := coalesce(p_now, now());
    want integer;
    seen uuid[] := '{}';  -- candidates looked at (and locked) so far
    chosen uuid[] := '{}';  -- those whose content row could be locked too, in queue order
    batch_jobs uuid[];
    batch_contents uuid[];
    locked uuid[];
    rounds integer := 0;
    claimed_row record;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('menos.claim_jobs'));
    -- Running jobs are the ones holding a lease, read in lease order (see 0007).
    SELECT p_max - count(*) INTO free
      FROM (SELECT 1 FROM menos.pipeline_job WHERE lease_expires_at > '-infinity'
             ORDER BY lease_expires_at LIMIT p_max) AS processing;
    want := least(free, p_limit);
    IF want <= 0 THEN
        RETURN;
    END IF;
    -- The status mirror writes each claimed job's content row, so a job is taken only with
    -- its content row locked too: one another transaction holds is passed over, and the
    -- next candidates are read, as many more as were passed over (a few rounds at most).
    LOOP
        SELECT coalesce(array_agg(p.job_id), '{}'), coalesce(array_agg(p.content_id), '{}')
          INTO batch_jobs, batch_contents
          FROM (SELECT job_id, content_id FROM menos.pipeline_job
                 WHERE status = 'pending' AND job_id <> ALL (seen)
                 ORDER BY priority, created_at, job_id
                 LIMIT want - cardinality(chosen) + (cardinality(seen) - cardinality(chosen))
                   FOR UPDATE SKIP LOCKED) AS p;
        SELECT coalesce(array_agg(c.content_id), '{}') INTO locked
          FROM (SELECT content_id FROM menos.content
                 WHERE content_id = ANY (batch_contents)
                   FOR NO KEY UPDATE SKIP LOCKED) AS c;
        FOR i IN 1 .. cardinality(batch_jobs) LOOP
            IF cardinality(chosen) < want AND batch_contents[i] = ANY (locked) THEN
                chosen := chosen || batch_jobs[i];
            END IF;
        END LOOP;
        seen := seen || batch_jobs;
        rounds := rounds + 1;
        EXIT WHEN cardinality(chosen) >= want OR cardinality(batch_jobs) = 0 OR rounds >= 8;
    END LOOP;
    IF cardinality(chosen) = 0 THEN
        RETURN;
    END IF;
    FOR claimed_row IN
        WITH claimed AS (
            UPDATE menos.pipeline_job j
               SET status = 'processing', attempts = j.attempts + 1, worker_id = p_worker,
                   lease_expires_at = at + make_interval(secs => p_lease_s),
                   started_at = at, current_stage = NULL, stages = '[]',
                   pipeline_version = p_version,
                   error_code = NULL, error_stage = NULL, error_message = NULL
             WHERE j.job_id = ANY (chosen)
            RETURNING j
        )
        SELECT claimed_job, claimed_content,
               sum(coalesce(octet_length((claimed_content).body), 0)) OVER (
                   ORDER BY (claimed_job).priority, (claimed_job).created_at, (claimed_job).job_id
               ) > p_inline_bytes AS omitted
          FROM (SELECT claimed.j AS claimed_job,
                       (SELECT c FROM menos.content c
                         WHERE c.content_id = (claimed.j).content_id) AS claimed_content
                  FROM claimed
                OFFSET 0) AS found  -- OFFSET 0: each content row is looked up once, by its key
         ORDER BY (claimed_job).priority, (claimed_job).created_at, (claimed_job).job_id
    LOOP
        job := claimed_row.claimed_job;
        content := claimed_row.claimed_content;
        content.result := NULL;
        body_omitted := claimed_row.omitted;
        IF body_omitted THEN
            content.body := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

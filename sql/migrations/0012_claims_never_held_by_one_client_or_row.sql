-- A claim holds the lock that keeps MENOS_MAX_CONCURRENCY exact (pg_advisory_xact_lock) until
-- it commits, and it commits once its result is sent: whatever holds one claim up holds every
-- worker's. Two things could, for as long as they liked (docs/reliability.md):
--
-- * A claimer that stops reading (a frozen process, a paused machine, a cut network) while its
--   result is large: the server waits to send (ClientWrite) with the lock held, where no
--   statement timeout reaches it. Content bodies (up to MENOS_MAX_BODY_BYTES each) are now
--   sent with the claim only while they add up to p_inline_bytes, which the two sockets'
--   buffers hold whether or not the claimer reads; a body past that comes back as NULL with
--   `body_omitted`, and the worker reads it once the claim has committed. The content's
--   `result`, which a run never reads (it writes a new one), is not sent at all.
-- * A content row locked by another transaction (an operator's open psql session, a reprocess
--   under way): the claim's status mirror (on_job_status) waited for it, lock held. A pending
--   job whose content row is locked is now passed over as a locked job is, without counting
--   towards the claim's limit, and a later claim takes it. (Done in steps, each of whose plans
--   reads only the rows it needs: a filter that locked the content row inside the candidates'
--   query let the planner sort every pending job, locking all their content rows, per claim.)
--
-- The claim with these is a new form of the function, taking p_inline_bytes. The form of 0007
-- stays as it was for workers of the previous version, which run until they are restarted
-- after `bin/menos migrate` and would not know a body was left out.
--
-- And a finished job never changes status again (DESIGN: reprocess makes a new job). Nothing in
-- menos does it; the trigger below refuses it from anyone, so a hand edit cannot reopen a job
-- whose callback event already exists and stall the rescuer on it.

CREATE FUNCTION menos.claim_jobs(
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

CREATE FUNCTION menos.refuse_reopening() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job % is %: a finished job never changes status again', OLD.job_id, OLD.status
        USING ERRCODE = 'check_violation',
              HINT = 'Reprocess the content instead: that makes a new job.';
END
$$;

CREATE TRIGGER pipeline_job_finished_stays BEFORE UPDATE OF status ON menos.pipeline_job
    FOR EACH ROW
    WHEN (OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status <> OLD.status)
    EXECUTE FUNCTION menos.refuse_reopening();

-- name: try_leader_lock
-- Become the one process running a periodic duty ($1 names it); false when another holds it.
SELECT pg_try_advisory_lock(hashtext($1));

-- name: release_leader_lock
-- Give up the duty's lock.
SELECT pg_advisory_unlock(hashtext($1));

-- name: database_now
-- The database's clock, which stamps finished_at, audit_event.at and metric_sample.updated_at.
SELECT now();

-- name: purge_jobs
-- Delete up to $2 terminal jobs finished before $1 whose callback event is not still pending (outbox rows go with them); each says whether it took a full payload finished before $3 with it.
WITH doomed AS (
    SELECT j.job_id FROM menos.pipeline_job j
     WHERE j.status IN ('completed', 'failed', 'cancelled') AND j.finished_at < $1
       AND NOT EXISTS (SELECT 1 FROM menos.callback_outbox o
                        WHERE o.job_id = j.job_id AND o.status = 'pending')
     ORDER BY j.finished_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
DELETE FROM menos.pipeline_job j USING doomed WHERE j.job_id = doomed.job_id
RETURNING j.job_id, (j.full_payload IS NOT NULL AND j.finished_at < $3) AS took_payload;

-- name: purge_full_payloads
-- Clear up to $2 full-tier payloads of jobs finished before $1.
WITH doomed AS (
    SELECT job_id FROM menos.pipeline_job
     WHERE full_payload IS NOT NULL AND finished_at < $1
     ORDER BY finished_at  -- pipeline_job_full_payloads: only jobs that still have one
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
UPDATE menos.pipeline_job j SET full_payload = NULL FROM doomed
 WHERE j.job_id = doomed.job_id
RETURNING j.job_id;

-- name: purge_audit_events
-- Delete up to $2 audit events older than $1.
WITH doomed AS (
    SELECT audit_id FROM menos.audit_event WHERE at < $1 ORDER BY at LIMIT $2
)
DELETE FROM menos.audit_event a USING doomed WHERE a.audit_id = doomed.audit_id
RETURNING a.audit_id;

-- name: purge_preview
-- What a purge at these cut-offs ($1 jobs and audit, $2 full payloads, $3 quiet processes'
-- metric samples) would touch.
SELECT
    (SELECT count(*) FROM menos.pipeline_job j
      WHERE j.status IN ('completed', 'failed', 'cancelled') AND j.finished_at < $1
        AND NOT EXISTS (SELECT 1 FROM menos.callback_outbox o
                         WHERE o.job_id = j.job_id AND o.status = 'pending')) AS jobs,
    (SELECT count(*) FROM menos.pipeline_job
      WHERE full_payload IS NOT NULL AND finished_at < $2) AS full_payloads,
    (SELECT count(*) FROM menos.audit_event WHERE at < $1) AS audit_events,
    (SELECT count(*) FROM (SELECT process_id FROM menos.metric_sample
                            WHERE process_id <> '(retired)'
                            GROUP BY process_id HAVING max(updated_at) < $3) AS quiet
    ) AS metric_processes;

-- Views for inspecting the queue in plain SQL (docs/sql.md).

CREATE VIEW menos.job_overview AS
SELECT s.status,
       coalesce(c.jobs, 0) AS jobs,
       CASE WHEN s.status = 'pending' THEN c.oldest_age END AS oldest_pending_age
  FROM (VALUES ('pending'), ('processing'), ('completed'), ('failed'), ('cancelled')) AS s (status)
  LEFT JOIN (
      SELECT status, count(*) AS jobs, now() - min(created_at) AS oldest_age
        FROM menos.pipeline_job GROUP BY status
  ) AS c USING (status);

CREATE VIEW menos.active_jobs AS
SELECT job_id, content_id, owner, resource_key, status, current_stage, worker_id, attempts,
       lease_expires_at, cancel_requested_at, priority, created_at, started_at,
       now() - coalesce(started_at, created_at) AS age
  FROM menos.pipeline_job
 WHERE status IN ('pending', 'processing');

CREATE VIEW menos.stuck_jobs AS
SELECT job_id, content_id, owner, current_stage, worker_id, attempts, lease_expires_at,
       now() - lease_expires_at AS expired_for
  FROM menos.pipeline_job
 WHERE status = 'processing' AND lease_expires_at < now();

CREATE VIEW menos.failed_jobs AS
SELECT job_id, content_id, owner, resource_key, error_code, error_stage, error_message,
       attempts, finished_at
  FROM menos.pipeline_job
 WHERE status = 'failed';

CREATE VIEW menos.callback_backlog AS
SELECT event_id, job_id, owner, event_type, url, attempts, next_attempt_at, last_status_code,
       last_error, created_at, now() - created_at AS age
  FROM menos.callback_outbox
 WHERE status = 'pending';

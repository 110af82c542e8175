-- name: upsert_metric_samples
-- Record one process's cumulative metric values (name, labels, value arrays).
INSERT INTO menos.metric_sample AS m (process_id, name, labels, value)
SELECT $1, s.name, s.labels, s.value
  FROM unnest($2::text[], $3::text[], $4::double precision[]) AS s (name, labels, value)
ON CONFLICT (process_id, name, labels)
DO UPDATE SET value = EXCLUDED.value, updated_at = now();

-- name: metric_totals
-- Every metric summed over all processes.
SELECT name, labels, sum(value) AS value FROM menos.metric_sample GROUP BY name, labels;

-- name: job_status_counts
-- Jobs per status, the pending depth and the age of the oldest pending job in seconds.
SELECT s.status, coalesce(c.jobs, 0) AS jobs, c.oldest_age_s
  FROM (VALUES ('pending'), ('processing'), ('completed'), ('failed'), ('cancelled')) AS s (status)
  LEFT JOIN (
      SELECT status, count(*) AS jobs,
             extract(epoch FROM now() - min(created_at))::double precision AS oldest_age_s
        FROM menos.pipeline_job GROUP BY status
  ) AS c USING (status);

-- name: upsert_metric_samples
-- Record one process's cumulative metric values (name, labels, value arrays).
INSERT INTO menos.metric_sample AS m (process_id, name, labels, value)
SELECT $1, s.name, s.labels, s.value::numeric
  FROM unnest($2::text[], $3::text[], $4::double precision[]) AS s (name, labels, value)
ON CONFLICT (process_id, name, labels)
DO UPDATE SET value = EXCLUDED.value, updated_at = now();

-- name: metric_totals
-- Every metric summed over all processes.
SELECT name, labels, sum(value)::double precision AS value
  FROM menos.metric_sample GROUP BY name, labels;

-- name: active_job_counts
-- Pending and processing jobs, and the age of the oldest pending job in seconds (read through the index of active jobs, whatever the number of finished ones).
SELECT s.status, coalesce(c.jobs, 0) AS jobs, c.oldest_age_s
  FROM (VALUES ('pending'), ('processing')) AS s (status)
  LEFT JOIN (
      SELECT status, count(*) AS jobs,
             extract(epoch FROM now() - min(created_at))::double precision AS oldest_age_s
        FROM menos.pipeline_job
       WHERE status IN ('pending', 'processing')
       GROUP BY status
  ) AS c USING (status);

-- name: finished_job_counts
-- Completed, failed and cancelled jobs: a read of the whole table.
SELECT s.status, coalesce(c.jobs, 0) AS jobs, NULL::double precision AS oldest_age_s
  FROM (VALUES ('completed'), ('failed'), ('cancelled')) AS s (status)
  LEFT JOIN (
      SELECT status, count(*) AS jobs
        FROM menos.pipeline_job
       WHERE status NOT IN ('pending', 'processing')
       GROUP BY status
  ) AS c USING (status);

-- name: retire_metric_samples
-- Fold the samples of the processes named in $1 (stopping) and of every process quiet since $2
-- into one row per metric under '(retired)', so totals keep their value and the table stays
-- small; returns how many processes were folded.
WITH gone AS (
    DELETE FROM menos.metric_sample
     WHERE process_id <> '(retired)'
       AND (process_id = ANY($1::text[])
            OR process_id IN (SELECT process_id FROM menos.metric_sample
                               GROUP BY process_id HAVING max(updated_at) < $2))
    RETURNING process_id, name, labels, value
), folded AS (
    INSERT INTO menos.metric_sample AS m (process_id, name, labels, value)
    SELECT '(retired)', name, labels, sum(value) FROM gone
     GROUP BY name, labels
     ORDER BY name, labels  -- one order for every retirement: concurrent ones cannot deadlock
    ON CONFLICT (process_id, name, labels)
    DO UPDATE SET value = m.value + EXCLUDED.value, updated_at = now()
)
SELECT count(DISTINCT process_id) AS processes FROM gone;

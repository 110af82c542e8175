-- name: bench_fill_pending
-- $1 pending markdown jobs with their content (rows shaped as menos's enqueue writes them), one transaction.
WITH g AS (
    -- time-ordered ids, as menos's `new_id()` makes them (uuidv7 is built into PostgreSQL 18)
    SELECT i, uuidv7() AS content_id, uuidv7() AS job_id
      FROM generate_series(1, $1::integer) AS i
), c AS (
    INSERT INTO menos.content (content_id, owner, content_type, resource_key, title, body,
                               pipeline_version, latest_job_id)
    SELECT g.content_id, $2, 'markdown', 'cid:' || g.content_id::text, $6 || g.i::text, $3, $5,
           g.job_id
      FROM g
     ORDER BY g.i
    RETURNING content_id, latest_job_id, resource_key
)
INSERT INTO menos.pipeline_job (job_id, content_id, owner, resource_key, pipeline_version,
                                callback_url)
SELECT c.latest_job_id, c.content_id, $2, c.resource_key, $5, $4 FROM c;

-- name: bench_fill_finished
-- $1 completed jobs with their content and a small result, finished over the last 30 days.
WITH g AS (
    SELECT i, uuidv7(-a.age) AS content_id, uuidv7(-a.age) AS job_id, now() - a.age AS finished
      FROM generate_series(1, $1::integer) AS i,
           -- `0 * i` ties the draw to the row, so each row gets its own age
           LATERAL (SELECT make_interval(secs => 30 * 86400 * random() + 0 * i) AS age) AS a
), c AS (
    INSERT INTO menos.content (content_id, owner, content_type, resource_key, title, body,
                               processing_status, pipeline_version, result, latest_job_id,
                               created_at)
    SELECT g.content_id, $2, 'markdown', 'cid:' || g.content_id::text, 'old ' || g.i::text, $3,
           'completed', $4,
           jsonb_build_object('summary', 'An old note.', 'tags', jsonb_build_array('old'),
                              'tier', 'C', 'quality_score', 50),
           g.job_id, g.finished - interval '2 seconds'
      FROM g
    RETURNING content_id, latest_job_id, resource_key, created_at
)
INSERT INTO menos.pipeline_job (job_id, content_id, owner, resource_key, status, attempts,
                                worker_id, pipeline_version, stages, created_at, started_at,
                                finished_at)
SELECT c.latest_job_id, c.content_id, $2, c.resource_key, 'completed', 1, 'old-worker', $4,
       -- a stage timing as a worker writes it: the job views read every field
       jsonb_build_array(jsonb_build_object(
           'name', 'persist', 'started_at', c.created_at + interval '1 second',
           'finished_at', c.created_at + interval '1.001 seconds', 'duration_ms', 1.0)),
       c.created_at, c.created_at + interval '1 second', c.created_at + interval '2 seconds'
  FROM c;

-- name: bench_menos_remaining
-- 1 while a job is unfinished, else 0. The orchestrator asks every 10 ms on the server the
-- drivers use, so each side's question stops at its first unfinished row and reads it from a
-- small index where the side has one: here the first pending job in claim order and the first
-- running one in lease order (every running menos job holds a lease).
SELECT (SELECT count(*) FROM (SELECT 1 FROM menos.pipeline_job WHERE status = 'pending'
                               ORDER BY priority, created_at, job_id LIMIT 1) AS pending)
     + (SELECT count(*) FROM (SELECT 1 FROM menos.pipeline_job
                               WHERE lease_expires_at > '-infinity'
                               ORDER BY lease_expires_at LIMIT 1) AS running);

-- name: bench_pgqueuer_remaining
-- pgqueuer deletes a job from its queue table once its outcome is logged: 1 while a row is left.
SELECT count(*) FROM (SELECT 1 FROM pgqueuer LIMIT 1) AS left_over;

-- name: bench_procrastinate_remaining
-- procrastinate keeps finished jobs; 1 while an unfinished one is left, read through its
-- index of unfinished jobs (procrastinate_jobs_id_lock_idx_v1).
SELECT count(*) FROM (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing')
                       ORDER BY id LIMIT 1) AS left_over;

-- name: bench_pipeline_window
-- How many jobs ended in each state, and the span from the first claim to the last finish.
SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       extract(epoch FROM min(started_at)) AS first_start,
       extract(epoch FROM max(finished_at)) AS last_finish
  FROM menos.pipeline_job
 WHERE finished_at IS NOT NULL AND worker_id <> 'old-worker';

-- name: bench_outbox_delivered
-- Callback events delivered so far, and all events.
SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered, count(*) AS events
  FROM menos.callback_outbox;

-- name: bench_database_stats
-- Transaction counters of one database.
SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1;

-- name: bench_statements
-- Top-level statements run in one database since the last reset, most called first.
SELECT s.calls, s.total_exec_time, s.rows, s.query
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname = $1
 ORDER BY s.calls DESC, s.total_exec_time DESC;

-- name: bench_statements_reset
-- Forget every statement counted so far.
SELECT pg_stat_statements_reset();

-- name: bench_enable_statements
-- pg_stat_statements is preloaded by the benchmark's server; its view lives in `postgres`.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

-- name: bench_checkpoint
-- Flush dirty pages so one measurement does not pay for the previous one's checkpoint.
CHECKPOINT;

-- name: bench_terminate
-- Disconnect everyone from a database about to be dropped.
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid();

-- name: bench_vacuum_jobs
-- What autovacuum would have done to a table that grew by a million rows.
VACUUM (ANALYZE) menos.pipeline_job;

-- name: bench_vacuum_content
-- The same for content.
VACUUM (ANALYZE) menos.content;

-- name: ceiling_schema
-- The smallest table a claim+complete queue needs: the database's own ceiling, no menos code.
CREATE TABLE ceiling_job (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    worker text,
    claimed_at timestamptz,
    finished_at timestamptz,
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ceiling_job_pending ON ceiling_job (id) WHERE status = 'pending';

-- name: ceiling_fill
-- $1 pending jobs.
INSERT INTO ceiling_job (payload) SELECT jsonb_build_object('seq', i) FROM generate_series(1, $1::integer) AS i;

-- name: ceiling_done
-- Jobs the pgbench clients completed.
SELECT count(*) FROM ceiling_job WHERE status = 'completed';

-- name: explain_claim
-- The claim's plan with timings: the body of menos.claim_jobs run as one statement, in a rolled-back transaction.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH picked AS (
    SELECT job_id, content_id FROM menos.pipeline_job
     WHERE status = 'pending'
     ORDER BY priority, created_at, job_id
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), unlocked AS (
    SELECT content_id FROM menos.content
     WHERE content_id = ANY (ARRAY(SELECT content_id FROM picked))
     FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE menos.pipeline_job j
   SET status = 'processing', attempts = j.attempts + 1, worker_id = 'explain',
       lease_expires_at = now() + interval '60 seconds', started_at = now()
 WHERE j.job_id = ANY (ARRAY(SELECT job_id FROM picked
                              WHERE content_id = ANY (ARRAY(SELECT content_id FROM unlocked))))
RETURNING j.job_id;

-- name: explain_count_processing
-- The count the claim function makes under its advisory lock (as in migration 0005, p_max = 100000).
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT 100000 - count(*)
  FROM (SELECT 1 FROM menos.pipeline_job WHERE lease_expires_at > '-infinity'
         LIMIT 100000) AS processing;

-- name: bench_job_count
-- All jobs of the database (what the HTTP benchmark's requests created).
SELECT count(*) AS jobs FROM menos.pipeline_job;

-- name: bench_title_by_job
-- The title the pacer gave each job's content, by job id.
SELECT j.job_id::text AS job_id, c.title
  FROM menos.pipeline_job j JOIN menos.content c USING (content_id);

-- name: bench_waits
-- What the active backends of one database are doing right now (wait event, or none: on CPU).
SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS waiting
  FROM pg_stat_activity
 WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()
   AND backend_type = 'client backend';

-- name: bench_next_xid
-- One past the newest transaction id of the whole server (exact when none is in flight); only
-- transactions that write get an id.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid;

-- name: bench_wal
-- WAL written by the whole server so far (records, full-page images, bytes).
SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal;

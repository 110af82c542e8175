-- name: insert_contents_and_jobs
-- Store new content with its first job, many in one statement ($1: one JSON object per item); an item whose owner already has its resource gets nothing (dedup).
WITH item AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS i (
        content_id uuid, job_id uuid, owner text, content_type text, resource_key text,
        source_url text, title text, tags text[], body text, source_metadata jsonb,
        pipeline_version text, data_tier text, callback_url text, priority smallint)
), new_content AS (
    INSERT INTO menos.content (content_id, owner, content_type, resource_key, source_url, title,
                               tags, body, source_metadata, pipeline_version, latest_job_id)
    SELECT content_id, owner, content_type, coalesce(resource_key, 'cid:' || content_id::text),
           source_url, title, tags, body, source_metadata, pipeline_version, job_id
      FROM item
    ON CONFLICT ON CONSTRAINT content_owner_resource_key_key DO NOTHING
    RETURNING content_id, resource_key
)
INSERT INTO menos.pipeline_job (job_id, content_id, owner, resource_key, data_tier, callback_url,
                                pipeline_version, priority)
SELECT item.job_id, item.content_id, item.owner, new_content.resource_key, item.data_tier,
       item.callback_url, item.pipeline_version, item.priority
  FROM new_content JOIN item USING (content_id)
 ORDER BY item.job_id
RETURNING job_id, content_id, resource_key;

-- name: find_resource
-- The owner's known content for a resource key, with its active job, else its latest job.
SELECT c.content_id, c.content_type, c.resource_key, j.job_id,
       coalesce(j.status, c.processing_status) AS status
  FROM menos.content c
  LEFT JOIN LATERAL (
      SELECT job_id, status FROM menos.pipeline_job
       WHERE content_id = c.content_id
       ORDER BY status IN ('pending', 'processing') DESC, created_at DESC
       LIMIT 1
  ) AS j ON true
 WHERE c.owner = $1 AND c.resource_key = $2;

-- name: claim_jobs
-- Claim up to $2 pending jobs for worker $1, never more than $3 processing in all; each with its content (without its result), bodies past the first $7 bytes left for content_bodies (see the function).
SELECT job, content, body_omitted FROM menos.claim_jobs($1, $2, $3, $4, $5::timestamptz, $6, $7);

-- name: content_bodies
-- The bodies a claim left out, once it has committed.
SELECT content_id, body FROM menos.content WHERE content_id = ANY ($1::uuid[]);

-- name: heartbeat
-- Extend the leases of the jobs this worker still holds, record their stage; returns those still held, `renewed` false for one whose row another transaction has locked (left as it is: waiting for that lock would hold every other job's lease up with it).
WITH beat AS (
    SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[]) AS h (job_id, attempts, stage)
), free AS (
    SELECT job_id FROM menos.pipeline_job
     WHERE job_id = ANY ($1::uuid[])
       FOR NO KEY UPDATE SKIP LOCKED
), renewed AS (
    UPDATE menos.pipeline_job j
       SET lease_expires_at = coalesce($5::timestamptz, now()) + make_interval(secs => $6),
           current_stage = h.stage,
           stages = coalesce($4::jsonb -> h.job_id::text, j.stages)
      FROM beat AS h
     WHERE j.job_id = ANY (ARRAY(SELECT job_id FROM free))
       AND j.job_id = h.job_id AND (j.status = 'processing') IS TRUE AND j.worker_id = $7
       AND j.attempts = h.attempts
    RETURNING j.job_id, j.cancel_requested_at IS NOT NULL AS cancel_requested
)
SELECT job_id, cancel_requested, true AS renewed FROM renewed
UNION ALL
SELECT j.job_id, false, false  -- as last committed: held unless that lock's change takes it
  FROM menos.pipeline_job j JOIN beat AS h USING (job_id)
 WHERE j.job_id = ANY ($1::uuid[]) AND j.job_id <> ALL (ARRAY(SELECT job_id FROM free))
   AND (j.status = 'processing') IS TRUE AND j.worker_id = $7 AND j.attempts = h.attempts;

-- name: save_fetched
-- Store what the fetch stage got, while this worker still holds the job. Its oEmbed lookup's outcome replaces an earlier one's (`oembed_error` or `channel`); metadata written by hand as something other than an object is replaced.
UPDATE menos.content c
   SET body = $4, title = coalesce(c.title, $5),
       source_metadata = CASE jsonb_typeof(c.source_metadata)
                             WHEN 'object' THEN c.source_metadata - 'oembed_error'
                             ELSE '{}' END || $6,
       updated_at = now()
  FROM menos.pipeline_job j
 WHERE j.job_id = $1 AND (j.status = 'processing') IS TRUE AND j.worker_id = $2
   AND j.attempts = $3
   AND c.content_id = j.content_id
RETURNING c.content_id;

-- name: complete_jobs
-- Persist runs ($1: one JSON object per job), each guarded by (job, worker, attempts): result and status on the content, job completed with its last stage as current_stage (as every ending write here), owner tag counts (a tag counted once per item that gains it); the status trigger writes outbox rows. A job whose cancel was asked before this write ends cancelled instead, keeping no result and counting no tags (its cancel was answered 202: it will end cancelled). Returns the jobs written with the status each ended in.
WITH run AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS r (
        job_id uuid, worker_id text, attempts integer, stages jsonb, diagnostics jsonb,
        full_payload jsonb, result jsonb, tags text[])
), job AS (
    UPDATE menos.pipeline_job j
       SET status = CASE WHEN j.cancel_requested_at IS NULL THEN 'completed' ELSE 'cancelled' END,
           finished_at = coalesce($2::timestamptz, now()),
           stages = run.stages, current_stage = run.stages -> -1 ->> 'name',
           diagnostics = run.diagnostics, full_payload = run.full_payload,
           lease_expires_at = NULL
      FROM run
     -- Found by primary key (an id array). The guard's `(status = 'processing') IS TRUE` means
     -- `status = 'processing'` but keeps the partial indexes out of the plan: after a VACUUM
     -- of an idle queue they are recorded as empty, and the planner would read every pending
     -- job through pipeline_job_one_active instead. Every guarded write here does the same.
     WHERE j.job_id = ANY (ARRAY(SELECT job_id FROM run))
       AND j.job_id = run.job_id AND (j.status = 'processing') IS TRUE
       AND j.worker_id = run.worker_id AND j.attempts = run.attempts
    RETURNING j.job_id, j.content_id, j.owner, j.pipeline_version, j.status
), saved AS (
    -- The status mirror is written here too, so the trigger leaves the row alone: one new
    -- version of the content row per completion. A cancelled run's too, so that its row is
    -- not first locked by the trigger, at the end of the statement, after the tag rows.
    UPDATE menos.content c
       SET result = CASE WHEN job.status = 'completed' THEN run.result ELSE c.result END,
           pipeline_version = CASE WHEN job.status = 'completed' THEN job.pipeline_version
                                   ELSE c.pipeline_version END,
           updated_at = now(),
           processing_status = CASE WHEN c.latest_job_id = job.job_id THEN job.status
                                    ELSE c.processing_status END,
           processed_at = CASE WHEN c.latest_job_id = job.job_id THEN now()
                               ELSE c.processed_at END
      FROM job JOIN run USING (job_id)
     WHERE c.content_id = job.content_id
       AND (job.status = 'completed' OR c.latest_job_id = job.job_id)
    RETURNING job.job_id, job.status
), used AS (
    -- Read from `saved`, so the content rows are written before any tag row is locked: a
    -- content row another transaction holds then keeps this statement waiting without
    -- holding the owner's tag rows, which every other completion of the owner needs.
    -- A tag the content's previous result had already is not counted again: a reprocess
    -- (or ten) of one item does not make its tags the owner's most used. Read as the
    -- statement found the row, before `saved` wrote it.
    SELECT DISTINCT job.owner, job.job_id, tag
      FROM saved JOIN job USING (job_id) JOIN run USING (job_id), unnest(run.tags) AS tag
     WHERE saved.status = 'completed'
       AND NOT EXISTS (SELECT FROM menos.content before
                        WHERE before.content_id = job.content_id
                          AND before.result -> 'tags' ? tag)
), counted AS (
    -- In tag order: concurrent completions of one owner lock the same rows in the same
    -- order, so they queue instead of deadlocking.
    INSERT INTO menos.owner_tag AS t (owner, tag, uses)
    SELECT owner, tag, count(*) FROM used GROUP BY owner, tag ORDER BY owner, tag
    ON CONFLICT (owner, tag) DO UPDATE SET uses = t.uses + excluded.uses
)
SELECT job_id, status FROM job;

-- name: fail_job
-- End a run as failed with its error, while this worker still holds it; cancelled instead
-- when a cancel was asked meanwhile (the error stays in its diagnostics).
UPDATE menos.pipeline_job
   SET status = CASE WHEN cancel_requested_at IS NULL THEN 'failed' ELSE 'cancelled' END,
       finished_at = coalesce($4::timestamptz, now()),
       error_code = CASE WHEN cancel_requested_at IS NULL THEN $5 END,
       error_stage = CASE WHEN cancel_requested_at IS NULL THEN $6 END,
       error_message = CASE WHEN cancel_requested_at IS NULL THEN $7 END,
       stages = $8, current_stage = $8::jsonb -> -1 ->> 'name', diagnostics = $9,
       full_payload = $10, lease_expires_at = NULL
 WHERE job_id = $1 AND (status = 'processing') IS TRUE AND worker_id = $2 AND attempts = $3
RETURNING status;

-- name: cancel_claimed_job
-- End a run as cancelled at a stage boundary, while this worker still holds it.
UPDATE menos.pipeline_job
   SET status = 'cancelled', finished_at = coalesce($4::timestamptz, now()), stages = $5,
       current_stage = $5::jsonb -> -1 ->> 'name', diagnostics = $6, lease_expires_at = NULL
 WHERE job_id = $1 AND (status = 'processing') IS TRUE AND worker_id = $2 AND attempts = $3
RETURNING job_id;

-- name: release_job
-- Give a claim back on graceful stop: pending again with the attempt not counted, or cancelled when a cancel was asked; returns the status it ended in.
UPDATE menos.pipeline_job
   SET status = CASE WHEN cancel_requested_at IS NULL THEN 'pending' ELSE 'cancelled' END,
       attempts = CASE WHEN cancel_requested_at IS NULL THEN attempts - 1 ELSE attempts END,
       started_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE started_at END,
       current_stage = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE current_stage END,
       stages = CASE WHEN cancel_requested_at IS NULL THEN '[]' ELSE stages END,
       finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
       worker_id = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE worker_id END,
       lease_expires_at = NULL
 WHERE job_id = $1 AND (status = 'processing') IS TRUE AND worker_id = $2 AND attempts = $3
RETURNING job_id, status;

-- name: rescue_expired
-- Return expired-lease jobs (all, or only job $3) to pending, or fail them WORKER_LOST after $2 claims (cancelled if cancel was asked); names the worker each was lost by. One whose content row another transaction holds is passed over until a later sweep.
WITH expired AS (
    SELECT job_id, content_id, worker_id,
           CASE WHEN attempts = 1
                THEN 'the worker running this job was lost (lease expired)'
                ELSE format('the workers running this job were lost %s times (lease expired)',
                            attempts) END AS lost_message
      FROM menos.pipeline_job
     WHERE (status = 'processing') IS TRUE AND lease_expires_at < coalesce($1::timestamptz, now())
       AND ($3::uuid IS NULL OR job_id = $3)
     ORDER BY lease_expires_at
     LIMIT 500
       FOR UPDATE SKIP LOCKED
), free AS (
    -- The status mirror writes each job's content row: waiting for one an open psql session
    -- holds would keep every other expired job from its rescue, as in the claim (0012).
    SELECT content_id FROM menos.content
     WHERE content_id = ANY (ARRAY(SELECT content_id FROM expired))
       FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE menos.pipeline_job j
   SET status = CASE
           WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
           WHEN j.attempts >= $2 THEN 'failed'
           ELSE 'pending' END,
       error_code = CASE
           WHEN j.cancel_requested_at IS NULL AND j.attempts >= $2 THEN 'WORKER_LOST' END,
       error_stage = CASE
           WHEN j.cancel_requested_at IS NULL AND j.attempts >= $2
           THEN coalesce(j.current_stage, 'fetch') END,
       error_message = CASE
           WHEN j.cancel_requested_at IS NULL AND j.attempts >= $2 THEN expired.lost_message END,
       -- the compact record names the failure, as a worker's own failures do
       diagnostics = CASE
           WHEN j.cancel_requested_at IS NULL AND j.attempts >= $2
           THEN j.diagnostics || jsonb_build_object('error', jsonb_build_object(
                    'code', 'WORKER_LOST', 'stage', coalesce(j.current_stage, 'fetch'),
                    'message', expired.lost_message))
           ELSE j.diagnostics END,
       finished_at = CASE
           WHEN j.cancel_requested_at IS NOT NULL OR j.attempts >= $2
           THEN coalesce($1::timestamptz, now()) END,
       -- Back to pending it has not started, as after a graceful release; an ending job
       -- keeps when it started and the stage it was lost in.
       started_at = CASE WHEN j.cancel_requested_at IS NULL AND j.attempts < $2
                         THEN NULL ELSE j.started_at END,
       current_stage = CASE WHEN j.cancel_requested_at IS NULL AND j.attempts < $2
                            THEN NULL ELSE j.current_stage END,
       stages = CASE WHEN j.cancel_requested_at IS NULL AND j.attempts < $2
                     THEN '[]' ELSE j.stages END,
       worker_id = CASE WHEN j.cancel_requested_at IS NULL AND j.attempts < $2
                        THEN NULL ELSE j.worker_id END,  -- an ended job names its last worker
       lease_expires_at = NULL
  FROM expired
 WHERE j.job_id = expired.job_id
   AND expired.content_id = ANY (ARRAY(SELECT content_id FROM free))
RETURNING j.job_id, j.content_id, j.status, j.attempts, expired.worker_id AS lost_worker_id;

-- name: expired_job_ids
-- The jobs whose lease expired, oldest lease first (at most 500): what rescue_expired takes back.
SELECT job_id FROM menos.pipeline_job
 WHERE (status = 'processing') IS TRUE AND lease_expires_at < coalesce($1::timestamptz, now())
 ORDER BY lease_expires_at
 LIMIT 500;

-- name: request_cancel
-- Cancel a pending job at once, or flag a processing one for its worker; returns the status before and after, and the job's owner.
WITH target AS (
    SELECT job_id, status, owner FROM menos.pipeline_job
     WHERE job_id = $1 AND ($2::text IS NULL OR owner = $2)
       FOR UPDATE
), changed AS (
    UPDATE menos.pipeline_job j
       SET status = CASE WHEN t.status = 'pending' THEN 'cancelled' ELSE j.status END,
           finished_at = CASE WHEN t.status = 'pending' THEN coalesce($3::timestamptz, now())
                              ELSE j.finished_at END,
           cancel_requested_at = coalesce(j.cancel_requested_at, $3::timestamptz, now())
      FROM target t
     WHERE j.job_id = t.job_id AND t.status IN ('pending', 'processing')
    RETURNING j.job_id, j.status
), notified AS (
    SELECT pg_notify('menos_cancel', job_id::text) FROM changed WHERE status = 'processing'
)
SELECT t.job_id, t.status AS previous, coalesce(c.status, t.status) AS status, t.owner,
       (SELECT count(*) FROM notified) AS notified
  FROM target t LEFT JOIN changed c USING (job_id);

-- name: job_by_id
-- One job, if the caller ($2, null for admin) may see it.
SELECT * FROM menos.pipeline_job WHERE job_id = $1 AND ($2::text IS NULL OR owner = $2);

-- name: callback_of_job
-- The callback event of a job, if one was written.
SELECT event_id, url, status, attempts, last_status_code, last_error, delivered_at
  FROM menos.callback_outbox WHERE job_id = $1;

-- name: content_by_id
-- One content item, if the caller ($2, null for admin) may see it.
SELECT * FROM menos.content WHERE content_id = $1 AND ($2::text IS NULL OR owner = $2);

-- name: owner_vocabulary
-- The owner's most used result tags, most used first.
SELECT tag FROM menos.owner_tag WHERE owner = $1 ORDER BY uses DESC, tag LIMIT $2;

-- name: owner_known_tags
-- Which of these tags the owner has used before.
SELECT tag FROM menos.owner_tag WHERE owner = $1 AND tag = ANY($2::text[]);

-- name: lock_content
-- Lock one content item visible to the caller ($2, null for admin) while a reprocess is decided.
SELECT content_id, owner, resource_key, processing_status, pipeline_version
  FROM menos.content
 WHERE content_id = $1 AND ($2::text IS NULL OR owner = $2)
   FOR UPDATE;

-- name: active_job_of_content
-- The content's pending or processing job, if any.
SELECT job_id, status FROM menos.pipeline_job
 WHERE content_id = $1 AND status IN ('pending', 'processing');

-- name: insert_reprocess_job
-- A new pending job for known content, made its latest; nothing when another job is already active.
-- A supplied transcript ($8) replaces the body, and what the metadata said of the downloaded one.
WITH job AS (
    INSERT INTO menos.pipeline_job (job_id, content_id, owner, resource_key, data_tier,
                                    callback_url, pipeline_version)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (owner, resource_key) WHERE status IN ('pending', 'processing') DO NOTHING
    RETURNING job_id, content_id
)
UPDATE menos.content c
   SET latest_job_id = job.job_id, processing_status = 'pending', processed_at = now(),
       updated_at = now(), body = coalesce($8, c.body),
       -- the keys youtube.fetch writes of a downloaded transcript
       source_metadata = CASE WHEN $8 IS NULL OR c.content_type <> 'youtube' THEN c.source_metadata
           ELSE (c.source_metadata - 'language' - 'transcript_generated' - 'duration')
                || '{"transcript_source": "supplied"}' END
  FROM job
 WHERE c.content_id = job.content_id
RETURNING job.job_id;

-- name: list_jobs
-- A page of jobs visible to the caller, newest first, after the cursor (created_at, job_id),
-- without stages, diagnostics and full payload: the list shows none of them, a full payload
-- runs to megabytes, and a stage timing written by hand would fail the whole page.
SELECT job_id, content_id, owner, resource_key, status, priority, attempts, worker_id,
       lease_expires_at, cancel_requested_at, current_stage, '[]'::jsonb AS stages, data_tier,
       '{}'::jsonb AS diagnostics, NULL::jsonb AS full_payload, error_code, error_stage,
       error_message, pipeline_version, callback_url, created_at, started_at, finished_at
  FROM menos.pipeline_job
 WHERE ($1::text IS NULL OR owner = $1)
   AND ($2::text IS NULL OR status = $2)
   AND ($3::uuid IS NULL OR content_id = $3)
   AND ($4::timestamptz IS NULL OR (created_at, job_id) < ($4, $5::uuid))
 ORDER BY created_at DESC, job_id DESC
 LIMIT $6;

-- name: list_content
-- A page of content visible to the caller, newest first, after the cursor (created_at, content_id), without its body and result: the list shows neither, and bodies run to megabytes. A tag filter matches a submitter tag as given ($4) or a result tag in its normalized form ($8: null when the filter has none).
SELECT content_id, owner, content_type, resource_key, source_url, title, tags,
       NULL::text AS body, source_metadata, processing_status, processed_at, pipeline_version,
       NULL::jsonb AS result, latest_job_id, created_at, updated_at
  FROM menos.content
 WHERE ($1::text IS NULL OR owner = $1)
   AND ($2::text IS NULL OR processing_status = $2)
   AND ($3::text IS NULL OR content_type = $3)
   AND ($4::text IS NULL OR tags @> ARRAY[$4::text] OR coalesce(result -> 'tags', '[]') ? $8::text)
   AND ($5::timestamptz IS NULL OR (created_at, content_id) < ($5, $6::uuid))
 ORDER BY created_at DESC, content_id DESC
 LIMIT $7;

-- name: export_content
-- A page of completed content that has a result (of owner $1, or all), newest first after the
-- cursor ($2, $3), without its body: the export never writes it, and bodies run to megabytes.
SELECT content_id, owner, content_type, resource_key, source_url, title, tags,
       NULL::text AS body, source_metadata, processing_status, processed_at, pipeline_version,
       result, latest_job_id, created_at, updated_at
  FROM menos.content
 WHERE ($1::text IS NULL OR owner = $1)
   AND processing_status = 'completed' AND result IS NOT NULL
   AND ($2::timestamptz IS NULL OR (created_at, content_id) < ($2, $3::uuid))
 ORDER BY created_at DESC, content_id DESC
 LIMIT $4;

-- name: contents_by_resource_key
-- Content items with this resource key, optionally of one owner.
SELECT * FROM menos.content
 WHERE resource_key = $1 AND ($2::text IS NULL OR owner = $2)
 ORDER BY created_at;

-- name: classify_candidates
-- A page of content to re-run, by id after $6: pending or failed (or $3 status only), or completed by an older version than $5 (the running version's parts, or NULL) when $4 (a version that is not dotted numbers is never older); no active job.
SELECT c.content_id, c.owner, c.processing_status, c.pipeline_version
  FROM menos.content c
 WHERE ($1::text IS NULL OR c.owner = $1)
   AND ($2::text IS NULL OR c.content_type = $2)
   AND (   ($3::text IS NULL AND c.processing_status IN ('pending', 'failed'))
        OR c.processing_status = $3
        OR ($4 AND c.processing_status = 'completed'
                -- CASE: the cast runs only on a version the pattern accepted.
                AND CASE WHEN c.pipeline_version ~ '^[0-9]+(\.[0-9]+)*$'
                         THEN string_to_array(c.pipeline_version, '.')::numeric[]
                              < $5::text[]::numeric[]
                         ELSE false END))
   -- The item's active job, looked up as the unique index of active jobs holds them: a
   -- lookup by content_id became a merge join reading every job up to the page, each page.
   AND NOT EXISTS (SELECT 1 FROM menos.pipeline_job j
                    WHERE j.owner = c.owner AND j.resource_key = c.resource_key
                      AND j.status IN ('pending', 'processing'))
   AND ($6::uuid IS NULL OR c.content_id > $6)
 ORDER BY c.content_id
 LIMIT $7;

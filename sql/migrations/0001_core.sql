-- The core schema: owners and keys, content, jobs, the callback outbox, audit events.

CREATE SCHEMA IF NOT EXISTS menos;

CREATE FUNCTION menos.rfc3339(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE TABLE menos.owner (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    webhook_secret text NOT NULL,
    previous_webhook_secret text,
    previous_secret_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE menos.api_key (
    key_id uuid PRIMARY KEY,
    owner text NOT NULL REFERENCES menos.owner (name),
    role text NOT NULL CHECK (role IN ('user', 'admin')),
    key_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_key_key_hash_key UNIQUE (key_hash)
);

CREATE TABLE menos.content (
    content_id uuid PRIMARY KEY,
    owner text NOT NULL REFERENCES menos.owner (name),
    content_type text NOT NULL CHECK (content_type IN ('youtube', 'web', 'markdown')),
    resource_key text NOT NULL,
    source_url text,
    title text,
    tags text[] NOT NULL DEFAULT '{}',
    body text,
    source_metadata jsonb NOT NULL DEFAULT '{}',
    processing_status text NOT NULL DEFAULT 'pending'
        CHECK (processing_status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    processed_at timestamptz NOT NULL DEFAULT now(),
    pipeline_version text NOT NULL,
    result jsonb,
    latest_job_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT content_owner_resource_key_key UNIQUE (owner, resource_key)
) WITH (fillfactor = 90);

CREATE INDEX content_owner_created ON menos.content (owner, created_at DESC, content_id DESC);

CREATE TABLE menos.pipeline_job (
    job_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    content_id uuid NOT NULL REFERENCES menos.content (content_id) ON DELETE CASCADE,
    owner text NOT NULL,
    resource_key text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    priority smallint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    worker_id text,
    lease_expires_at timestamptz,
    cancel_requested_at timestamptz,
    current_stage text,
    stages jsonb NOT NULL DEFAULT '[]',
    data_tier text NOT NULL DEFAULT 'compact' CHECK (data_tier IN ('compact', 'full')),
    diagnostics jsonb NOT NULL DEFAULT '{}',
    full_payload jsonb,
    error_code text,
    error_stage text,
    error_message text,
    pipeline_version text NOT NULL,
    callback_url text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz
) WITH (fillfactor = 70);

-- At most one active job per (owner, resource_key): dedup relies on this, never on a check.
CREATE UNIQUE INDEX pipeline_job_one_active ON menos.pipeline_job (owner, resource_key)
    WHERE status IN ('pending', 'processing');
CREATE INDEX pipeline_job_claimable ON menos.pipeline_job (priority, created_at, job_id)
    WHERE status = 'pending';
CREATE INDEX pipeline_job_leases ON menos.pipeline_job (lease_expires_at)
    WHERE status = 'processing';
CREATE INDEX pipeline_job_content ON menos.pipeline_job (content_id, created_at DESC);
CREATE INDEX pipeline_job_owner_created ON menos.pipeline_job (owner, created_at DESC, job_id DESC);
CREATE INDEX pipeline_job_created ON menos.pipeline_job (created_at DESC, job_id DESC);
CREATE INDEX pipeline_job_finished ON menos.pipeline_job (finished_at)
    WHERE finished_at IS NOT NULL;

ALTER TABLE menos.content ADD CONSTRAINT content_latest_job_fk
    FOREIGN KEY (latest_job_id) REFERENCES menos.pipeline_job (job_id) ON DELETE SET NULL
    DEFERRABLE INITIALLY DEFERRED;  -- content and its first job are inserted in one statement

CREATE TABLE menos.callback_outbox (
    event_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id uuid NOT NULL REFERENCES menos.pipeline_job (job_id) ON DELETE CASCADE,
    owner text NOT NULL,
    event_type text NOT NULL CHECK (event_type IN ('job.completed', 'job.failed', 'job.cancelled')),
    url text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status_code integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT callback_outbox_job_id_key UNIQUE (job_id)
);

CREATE INDEX callback_outbox_due ON menos.callback_outbox (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE menos.audit_event (
    audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event text NOT NULL,
    owner text,
    actor_key_id uuid,
    subject uuid,
    detail jsonb NOT NULL DEFAULT '{}',
    at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_event_at ON menos.audit_event (at);

-- How often each owner's completed results used a tag: the analyzer's preferred vocabulary,
-- and what makes a tag "new" for an owner.
CREATE TABLE menos.owner_tag (
    owner text NOT NULL REFERENCES menos.owner (name),
    tag text NOT NULL,
    uses integer NOT NULL DEFAULT 1,
    PRIMARY KEY (owner, tag)
);

-- A new or returned pending job wakes the workers; the payload is empty so PostgreSQL folds
-- the notifications of one transaction into one.
CREATE FUNCTION menos.notify_pending() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('menos_jobs', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER pipeline_job_notify_insert AFTER INSERT ON menos.pipeline_job
    FOR EACH STATEMENT EXECUTE FUNCTION menos.notify_pending();

CREATE TRIGGER pipeline_job_notify_requeue AFTER UPDATE OF status ON menos.pipeline_job
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status <> 'pending')
    EXECUTE FUNCTION menos.notify_pending();

-- Every status change is mirrored on the content when the job is its latest; every terminal
-- transition of a job with a callback_url writes its outbox event in the same transaction.
CREATE FUNCTION menos.on_job_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    content_result jsonb;
BEGIN
    UPDATE menos.content
       SET processing_status = NEW.status, processed_at = now(), updated_at = now()
     WHERE content_id = NEW.content_id AND latest_job_id = NEW.job_id
    RETURNING result INTO content_result;

    IF NEW.status IN ('completed', 'failed', 'cancelled') AND NEW.callback_url IS NOT NULL THEN
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

CREATE TRIGGER pipeline_job_status AFTER UPDATE OF status ON menos.pipeline_job
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION menos.on_job_status();

-- Claim up to p_limit pending jobs for one worker without ever letting more than p_max jobs be
-- processing across all workers. The advisory lock serializes claimers, and the claim runs as
-- its own statement after it, so its snapshot sees every claim committed before the lock.
CREATE FUNCTION menos.claim_jobs(
    p_worker text, p_limit integer, p_max integer, p_lease_s double precision,
    p_now timestamptz, p_version text
) RETURNS SETOF menos.pipeline_job
LANGUAGE plpgsql AS $$
DECLARE
    free integer;
    at timestamptz := coalesce(p_now, now());
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('menos.claim_jobs'));
    SELECT p_max - count(*) INTO free FROM menos.pipeline_job WHERE status = 'processing';
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
    )
    UPDATE menos.pipeline_job j
       SET status = 'processing', attempts = j.attempts + 1, worker_id = p_worker,
           lease_expires_at = at + make_interval(secs => p_lease_s),
           started_at = at, current_stage = NULL, stages = '[]', pipeline_version = p_version,
           error_code = NULL, error_stage = NULL, error_message = NULL
      FROM picked
     WHERE j.job_id = picked.job_id
    RETURNING j.*;
END
$$;

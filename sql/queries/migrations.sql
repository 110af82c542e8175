-- name: migrations_lock
-- Serialize migration runners across processes (session-level advisory lock).
SELECT pg_advisory_lock(hashtext('menos.migrations'));

-- name: migrations_unlock
-- Release the migration runners' lock.
SELECT pg_advisory_unlock(hashtext('menos.migrations'));

-- name: migrations_table
-- Create the schema and the table recording applied migrations.
CREATE SCHEMA IF NOT EXISTS menos;
CREATE TABLE IF NOT EXISTS menos.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- The SHA-256 of the file applied (null for versions recorded before it was kept).
ALTER TABLE menos.schema_migrations ADD COLUMN IF NOT EXISTS checksum text;

-- name: migrations_table_exists
-- Whether the migrations table exists yet.
SELECT to_regclass('menos.schema_migrations') IS NOT NULL;

-- name: migrations_applied
-- Versions already applied.
SELECT version FROM menos.schema_migrations ORDER BY version;

-- name: migrations_recorded
-- Versions already applied, with the name and checksum recorded for each (after migrations_table).
SELECT version, name, checksum FROM menos.schema_migrations ORDER BY version;

-- name: migrations_lock_timeout
-- How long the statements of this migration's transaction wait for a lock ($1 seconds).
SELECT set_config('lock_timeout', ($1::float8 * 1000)::bigint::text, true);

-- name: migrations_long_transactions
-- Other sessions on this database in a transaction for longer than $1 seconds: those that
-- may hold what a migration waits for (query text only where this role may read it). A
-- session of a role whose activity this one may not read (its state and times are null) is
-- named when it holds a lock on a table of this database.
SELECT a.pid, a.usename AS role, a.application_name, a.state,
       round(extract(epoch FROM now() - a.xact_start))::integer AS in_transaction_s,
       left(a.query, 200) AS query
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
   AND (a.xact_start < now() - make_interval(secs => $1)
        OR (a.xact_start IS NULL AND a.state IS NULL
            AND EXISTS (SELECT 1 FROM pg_locks l
                         WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation'
                           AND l.database = (SELECT oid FROM pg_database
                                              WHERE datname = current_database()))))
 ORDER BY a.xact_start NULLS LAST
 LIMIT 10;

-- name: migrations_record
-- Record one applied migration and its file's checksum.
INSERT INTO menos.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: migrations_record_checksum
-- Keep the checksum of a migration recorded before checksums were (its name matched).
UPDATE menos.schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL;

-- name: database_read_only
-- Whether this database refuses writes: a standby (after a failover to the wrong side), or
-- default_transaction_read_only set on it.
SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean;

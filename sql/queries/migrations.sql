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

-- name: migrations_table_exists
-- Whether the migrations table exists yet.
SELECT to_regclass('menos.schema_migrations') IS NOT NULL;

-- name: migrations_applied
-- Versions already applied.
SELECT version FROM menos.schema_migrations ORDER BY version;

-- name: migrations_record
-- Record one applied migration.
INSERT INTO menos.schema_migrations (version, name) VALUES ($1, $2);

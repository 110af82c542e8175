-- name: embedded_database_exists
-- Whether the embedded cluster already has the menos database.
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'menos');

-- name: embedded_create_database
-- Create the menos database in a new embedded cluster.
CREATE DATABASE menos;

"""menos: a self-hosted content-ingest service built on a PostgreSQL job queue."""

-- The purge clears full-tier payloads of jobs finished before a cut-off, in batches.
--
-- Without an index of its own, each batch walked the jobs finished before the cut-off
-- (pipeline_job_finished) past every one whose payload was already cleared or never set:
-- all compact-tier jobs, and every full-tier job of earlier purges, until they are deleted
-- MENOS_RETENTION_COMPACT_DAYS later. This index holds only the jobs that still have a
-- payload, so a batch reads what it clears. Compact-tier jobs (the default) have no entry.

CREATE INDEX pipeline_job_full_payloads ON menos.pipeline_job (finished_at)
    WHERE full_payload IS NOT NULL;

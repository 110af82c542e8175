-- A lease exists only while a job is processing.
--
-- The claim counts running jobs by their leases (0005, 0007), so a job that left
-- `processing` with its lease kept would hold one of MENOS_MAX_CONCURRENCY's slots forever,
-- and the rescuer, which looks only at `processing` jobs, would never free it. Every write
-- menos makes clears the lease when the job leaves `processing`; a hand-made UPDATE might
-- not, so the database now refuses it. Leases such an UPDATE already left are cleared first.

UPDATE menos.pipeline_job
   SET lease_expires_at = NULL
 WHERE lease_expires_at IS NOT NULL AND status <> 'processing';

ALTER TABLE menos.pipeline_job
    ADD CONSTRAINT pipeline_job_lease_only_while_processing
    CHECK (lease_expires_at IS NULL OR status = 'processing');

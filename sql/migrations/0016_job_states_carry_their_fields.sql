-- A job's status carries the fields that go with it: the other halves of 0008.
--
-- A processing job holds a lease. The rescuer takes back `processing` jobs whose lease has
-- expired, and the claim counts running jobs by their leases. A job put in `processing` by
-- hand without a lease (psql: `UPDATE menos.pipeline_job SET status = 'processing' …`) is
-- neither: no worker runs it and none ever will, `menos.stuck_jobs` does not show it, a cancel
-- of it is accepted (202) and never answered, and its content cannot be reprocessed (it has
-- an active job).
--
-- A finished job carries when it finished. The purge removes finished jobs by `finished_at`,
-- and the API and callbacks report it. A job ended by hand without it (psql: `UPDATE
-- menos.pipeline_job SET status = 'cancelled' WHERE job_id = …`) is never purged, and shown
-- with `finished_at: null` by the API and in its callback event.
--
-- Every write menos makes keeps both; the database now refuses one that does not. Jobs such
-- UPDATEs already left are mended first: one processing without a lease is taken back as the
-- rescuer takes an expired one (cancelled if a cancel was asked), and one finished without a
-- time takes the time of this migration, so its retention starts now.

UPDATE menos.pipeline_job
   SET status = CASE WHEN cancel_requested_at IS NULL THEN 'pending' ELSE 'cancelled' END,
       finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
       started_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE started_at END,
       current_stage = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE current_stage END,
       stages = CASE WHEN cancel_requested_at IS NULL THEN '[]' ELSE stages END,
       worker_id = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE worker_id END
 WHERE status = 'processing' AND lease_expires_at IS NULL;

UPDATE menos.pipeline_job
   SET finished_at = now()
 WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at IS NULL;

ALTER TABLE menos.pipeline_job
    ADD CONSTRAINT pipeline_job_processing_holds_lease
        CHECK (status <> 'processing' OR lease_expires_at IS NOT NULL),
    ADD CONSTRAINT pipeline_job_finished_when_finished
        CHECK (status NOT IN ('completed', 'failed', 'cancelled') OR finished_at IS NOT NULL);

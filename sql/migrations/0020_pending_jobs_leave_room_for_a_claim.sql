-- A pending job's count of claims leaves room for one more.
--
-- A claim counts the attempt of every job it takes (`attempts + 1`, an integer). A pending
-- job whose count was set to 2147483647 by hand (psql: `UPDATE menos.pipeline_job SET
-- attempts = 2147483647 …`) made every claim that reached it fail with `integer out of
-- range`: it is first in line once it is the oldest of the highest priority, so no worker ran
-- any job again until the row was changed. Nothing in menos leaves such a count: a claim
-- past MENOS_JOB_MAX_ATTEMPTS (at most 2147483647) is failed WORKER_LOST by the rescuer,
-- not put back. The database now refuses it; pending jobs such UPDATEs already left get the
-- largest count a claim can still add to.

UPDATE menos.pipeline_job
   SET attempts = 2147483646
 WHERE status = 'pending' AND attempts = 2147483647;

ALTER TABLE menos.pipeline_job
    ADD CONSTRAINT pipeline_job_pending_attempts_countable
        CHECK (status <> 'pending' OR attempts < 2147483647);

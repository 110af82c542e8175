-- A claim and the status trigger touch only the rows of their batch, found by primary key;
-- they must never read a whole table. On a young installation (tables of a few thousand
-- rows) the planner judged a hash join over a sequential scan cheaper than a hundred index
-- lookups, and a batch-100 claim or completion then read every content and job row: about
-- 60 µs of database CPU per job (docs/performance.md). Within these two functions
-- sequential scans are a last resort.

ALTER FUNCTION menos.claim_jobs(text, integer, integer, double precision, timestamptz, text)
    SET enable_seqscan = off;

ALTER FUNCTION menos.on_job_status() SET enable_seqscan = off;

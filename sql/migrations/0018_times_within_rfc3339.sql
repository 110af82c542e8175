-- Every time menos reads back lies between the years 1 and 9999, as RFC 3339 (and Python)
-- can write it.
--
-- A timestamptz column also takes `infinity`, `-infinity`, years BC and years past 9999
-- (psql: `UPDATE menos.pipeline_job SET created_at = '10000-01-01' …`). The driver cannot
-- read the last two: such a job or content item made its view and every page of the lists
-- holding it a 500, and a claim taking the job failed after committing, so the job and the
-- ones claimed with it stayed processing until their leases ran out, and all ended
-- WORKER_LOST. Infinities were read as times without a zone, shown without their `Z`. The
-- database now refuses all four in the times the services and the API read; rows such
-- UPDATEs already left take the nearest time that is allowed.

-- The nearest allowed time; NULL (a time not set) stays NULL.
CREATE FUNCTION pg_temp.brought_in(ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN ts < '0001-01-01 00:00:00+00' THEN '0001-01-01 00:00:00+00'
                WHEN ts > '9999-12-31 23:59:59.999999+00' THEN '9999-12-31 23:59:59.999999+00'
                ELSE ts END
$$;

UPDATE menos.content
   SET created_at = pg_temp.brought_in(created_at),
       updated_at = pg_temp.brought_in(updated_at),
       processed_at = pg_temp.brought_in(processed_at)
 WHERE NOT (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
            AND updated_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
            AND processed_at BETWEEN '0001-01-01 00:00:00+00'
                                 AND '9999-12-31 23:59:59.999999+00');

UPDATE menos.pipeline_job
   SET created_at = pg_temp.brought_in(created_at),
       started_at = pg_temp.brought_in(started_at),
       finished_at = pg_temp.brought_in(finished_at),
       lease_expires_at = pg_temp.brought_in(lease_expires_at),
       cancel_requested_at = pg_temp.brought_in(cancel_requested_at)
 WHERE NOT (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00')
    OR NOT (started_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00')
    OR NOT (finished_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00')
    OR NOT (lease_expires_at BETWEEN '0001-01-01 00:00:00+00'
                                 AND '9999-12-31 23:59:59.999999+00')
    OR NOT (cancel_requested_at BETWEEN '0001-01-01 00:00:00+00'
                                    AND '9999-12-31 23:59:59.999999+00');

UPDATE menos.callback_outbox
   SET created_at = pg_temp.brought_in(created_at),
       next_attempt_at = pg_temp.brought_in(next_attempt_at),
       delivered_at = pg_temp.brought_in(delivered_at)
 WHERE NOT (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00')
    OR NOT (next_attempt_at BETWEEN '0001-01-01 00:00:00+00'
                                AND '9999-12-31 23:59:59.999999+00')
    OR NOT (delivered_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00');

UPDATE menos.owner
   SET created_at = pg_temp.brought_in(created_at),
       previous_secret_expires_at = pg_temp.brought_in(previous_secret_expires_at)
 WHERE NOT (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00')
    OR NOT (previous_secret_expires_at BETWEEN '0001-01-01 00:00:00+00'
                                           AND '9999-12-31 23:59:59.999999+00');

UPDATE menos.api_key
   SET created_at = pg_temp.brought_in(created_at),
       revoked_at = pg_temp.brought_in(revoked_at)
 WHERE NOT (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00')
    OR NOT (revoked_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00');

DROP FUNCTION pg_temp.brought_in(timestamptz);

-- A CHECK passes a NULL time: only a time that is set must lie in the range.
ALTER TABLE menos.content
    ADD CONSTRAINT content_times_within_rfc3339
        CHECK (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
               AND updated_at BETWEEN '0001-01-01 00:00:00+00'
                                  AND '9999-12-31 23:59:59.999999+00'
               AND processed_at BETWEEN '0001-01-01 00:00:00+00'
                                    AND '9999-12-31 23:59:59.999999+00');

ALTER TABLE menos.pipeline_job
    ADD CONSTRAINT pipeline_job_times_within_rfc3339
        CHECK (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
               AND started_at BETWEEN '0001-01-01 00:00:00+00'
                                  AND '9999-12-31 23:59:59.999999+00'
               AND finished_at BETWEEN '0001-01-01 00:00:00+00'
                                   AND '9999-12-31 23:59:59.999999+00'
               AND lease_expires_at BETWEEN '0001-01-01 00:00:00+00'
                                        AND '9999-12-31 23:59:59.999999+00'
               AND cancel_requested_at BETWEEN '0001-01-01 00:00:00+00'
                                           AND '9999-12-31 23:59:59.999999+00');

ALTER TABLE menos.callback_outbox
    ADD CONSTRAINT callback_outbox_times_within_rfc3339
        CHECK (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
               AND next_attempt_at BETWEEN '0001-01-01 00:00:00+00'
                                       AND '9999-12-31 23:59:59.999999+00'
               AND delivered_at BETWEEN '0001-01-01 00:00:00+00'
                                    AND '9999-12-31 23:59:59.999999+00');

ALTER TABLE menos.owner
    ADD CONSTRAINT owner_times_within_rfc3339
        CHECK (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
               AND previous_secret_expires_at BETWEEN '0001-01-01 00:00:00+00'
                                                  AND '9999-12-31 23:59:59.999999+00');

ALTER TABLE menos.api_key
    ADD CONSTRAINT api_key_times_within_rfc3339
        CHECK (created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
               AND revoked_at BETWEEN '0001-01-01 00:00:00+00'
                                  AND '9999-12-31 23:59:59.999999+00');

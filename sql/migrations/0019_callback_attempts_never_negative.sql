-- A callback event counts its attempts from 0.
--
-- The dispatcher claims an event while `attempts` is below 3 and ends it `failed` once the
-- attempt it records reaches 3, so an event whose count was set below 0 by hand (psql:
-- `UPDATE menos.callback_outbox SET attempts = -3 …`, a mistyped new round of attempts) was
-- sent 3 more times than that, each one after a shorter backoff: a receiver got six
-- requests for one event where at most three are ever made. The database now refuses such a
-- count, as it does a job's; events such UPDATEs already left start again from 0.

UPDATE menos.callback_outbox SET attempts = 0 WHERE attempts < 0;

ALTER TABLE menos.callback_outbox
    ADD CONSTRAINT callback_outbox_attempts_check CHECK (attempts >= 0);

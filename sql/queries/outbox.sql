-- name: claim_outbox_events
-- Claim up to $2 due callback events: count the attempt and hold the event past it before anything is sent.
WITH due AS (
    SELECT event_id FROM menos.callback_outbox
     WHERE status = 'pending' AND attempts < $3
       AND next_attempt_at <= coalesce($1::timestamptz, now())
     ORDER BY next_attempt_at, event_id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
UPDATE menos.callback_outbox o
   SET attempts = o.attempts + 1,
       -- Held until this attempt has surely ended ($5: its timeout plus a margin), so no other
       -- claim overlaps it; before the last attempt, also never sooner than the next backoff
       -- ($4 × 4^(attempt - 1)). A recorded failure sets the real retry time.
       next_attempt_at = coalesce($1::timestamptz, now()) + make_interval(secs => CASE
           WHEN o.attempts + 1 >= $3 THEN $5::float8
           ELSE greatest($4::float8 * 4.0::float8 ^ o.attempts, $5::float8) END)
  FROM due
 WHERE o.event_id = due.event_id
RETURNING o.event_id, o.job_id, o.owner, o.url, o.payload::text AS payload, o.attempts,
          o.created_at;

-- name: record_outbox_delivered
-- Mark an event delivered by attempt $2, unless the event moved on since (claimed again, or ended).
UPDATE menos.callback_outbox
   SET status = 'delivered', delivered_at = coalesce($4::timestamptz, now()),
       last_status_code = $3, last_error = NULL
 WHERE event_id = $1 AND attempts = $2 AND status = 'pending'
RETURNING status;

-- name: record_outbox_failure
-- Record failed attempt $2: retry after $5 × 4^(attempt - 1) seconds, or failed after attempt $6; guarded like delivered.
UPDATE menos.callback_outbox
   SET status = CASE WHEN attempts >= $6 THEN 'failed' ELSE 'pending' END,
       last_status_code = $3, last_error = $4,
       next_attempt_at = CASE WHEN attempts >= $6 THEN next_attempt_at
           ELSE coalesce($7::timestamptz, now())
                + make_interval(secs => $5::float8 * 4.0::float8 ^ (attempts - 1)) END
 WHERE event_id = $1 AND attempts = $2 AND status = 'pending'
RETURNING status;

-- name: fail_exhausted_outbox_events
-- End as failed the events whose last attempt ($2) was sent but never recorded before its hold ran out.
WITH lost AS (
    SELECT event_id FROM menos.callback_outbox
     WHERE status = 'pending' AND attempts >= $2
       AND next_attempt_at <= coalesce($1::timestamptz, now())
     ORDER BY next_attempt_at
     LIMIT 500
       FOR UPDATE SKIP LOCKED
)
UPDATE menos.callback_outbox o
   SET status = 'failed', last_status_code = NULL,
       last_error = format('attempt %s was sent but its outcome was never recorded (dispatcher lost)',
                           o.attempts)
  FROM lost
 WHERE o.event_id = lost.event_id
RETURNING o.event_id, o.job_id, o.owner, o.url, o.attempts, o.last_error;

-- name: outbox_next_due_in
-- Seconds until the earliest pending event is due (negative when overdue); null when none waits.
SELECT extract(epoch FROM min(next_attempt_at) - coalesce($1::timestamptz, now()))::float8
  FROM menos.callback_outbox
 WHERE status = 'pending';

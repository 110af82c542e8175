-- name: claim_outbox_events
-- Claim up to $2 due callback events: count the attempt and hold the event past it before anything is sent; with the secrets that sign it now and when the next look is due.
WITH due AS (
    SELECT event_id, owner FROM menos.callback_outbox
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
  LEFT JOIN menos.owner w ON w.name = due.owner
 WHERE o.event_id = due.event_id
RETURNING o.event_id, o.job_id, o.owner, o.url, o.payload::text AS payload, o.attempts,
          o.created_at,
          -- After a rotation the previous secret signs too, until it expires.
          w.webhook_secret,
          CASE WHEN w.previous_secret_expires_at > coalesce($1::timestamptz, now())
               THEN w.previous_webhook_secret END AS previous_webhook_secret,
          -- Seconds until another event may be due (as outbox_next_due_in, which a claim then
          -- need not be followed by): the earliest other pending one, or the end of this hold.
          least((SELECT extract(epoch FROM min(p.next_attempt_at)
                                - coalesce($1::timestamptz, now()))::float8
                   FROM menos.callback_outbox p
                  WHERE p.status = 'pending'
                    AND p.event_id NOT IN (SELECT event_id FROM due)),
                $5::float8) AS next_due_in;

-- name: record_outbox_outcomes
-- Record several attempts' outcomes ($1: a JSON array) in one statement, each guarded by (event, attempt, pending) and audited as $2.
WITH outcome AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(
        i int, event_id uuid, attempts int, status_code int, error text, at timestamptz,
        max_attempts int, backoff_s float8, owner text, job_id uuid, detail jsonb)
),
locked AS MATERIALIZED (
    -- Rows are locked in one order, so two dispatchers recording overlapping groups (a stale
    -- outcome and the current one) wait for each other instead of deadlocking. Found by
    -- primary key (an id array): a semi-join let a table never analyzed be read whole.
    SELECT event_id FROM menos.callback_outbox
     WHERE event_id = ANY (ARRAY(SELECT event_id FROM outcome))
     ORDER BY event_id
       FOR UPDATE
),
recorded AS (
    -- A delivered attempt ends the event; a failed one is retried after
    -- backoff_s × 4^(attempt - 1) seconds, or ends it `failed` after max_attempts.
    UPDATE menos.callback_outbox o
       SET status = CASE WHEN x.error IS NULL THEN 'delivered'
                         WHEN o.attempts >= x.max_attempts THEN 'failed' ELSE 'pending' END,
           delivered_at = CASE WHEN x.error IS NULL THEN coalesce(x.at, now())
                               ELSE o.delivered_at END,
           last_status_code = x.status_code,
           last_error = x.error,
           next_attempt_at = CASE WHEN x.error IS NULL OR o.attempts >= x.max_attempts
               THEN o.next_attempt_at
               ELSE coalesce(x.at, now())
                    + make_interval(secs => x.backoff_s * 4.0::float8 ^ (o.attempts - 1)) END
      FROM locked l, outcome x
     WHERE o.event_id = l.event_id AND x.event_id = l.event_id
       AND o.attempts = x.attempts AND o.status = 'pending'
    RETURNING o.event_id, o.attempts, o.status
),
audited AS (
    -- Every attempt leaves its audit row, recorded or not, in the same transaction.
    INSERT INTO menos.audit_event (event, owner, actor_key_id, subject, detail)
    SELECT $2, x.owner, NULL, x.job_id, x.detail || jsonb_build_object('status', r.status)
      FROM outcome x
      LEFT JOIN recorded r ON r.event_id = x.event_id AND r.attempts = x.attempts
     ORDER BY x.i
)
SELECT x.i, r.status
  FROM outcome x
  LEFT JOIN recorded r ON r.event_id = x.event_id AND r.attempts = x.attempts
 ORDER BY x.i;

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

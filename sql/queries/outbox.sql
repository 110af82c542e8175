-- name: claim_outbox_events
-- Claim up to $2 due callback events, none of the owners in $6, for one attempt each: hold the event for the attempt ($4: its timeout plus a margin), not yet counting it; with the secrets that sign it now and when the next look is due. A previous attempt counted but never recorded is audited `lost` ($5) and reported.
WITH due AS (
    SELECT event_id, owner, attempts, unrecorded_attempt IS NOT DISTINCT FROM attempts AS lost
      FROM menos.callback_outbox
     WHERE status = 'pending' AND attempts < $3
       AND next_attempt_at <= coalesce($1::timestamptz, now())
       -- Owners with their share of deliveries in flight wait while others' events are due.
       AND owner <> ALL ($6::text[])
     ORDER BY next_attempt_at, event_id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE menos.callback_outbox o
       -- The attempt counts once its request goes out (count_outbox_attempts), or when its
       -- failure to connect is recorded: a claimer that dies before sending costs no attempt.
       SET next_attempt_at = coalesce($1::timestamptz, now()) + make_interval(secs => $4::float8),
           -- The previous attempt's hold ran out with no outcome: it is known lost now, and
           -- an outcome that still comes for it is refused (record_outbox_outcomes).
           unrecorded_attempt = NULL,
           last_status_code = CASE WHEN due.lost THEN NULL ELSE o.last_status_code END,
           last_error = CASE WHEN due.lost THEN format(
               'the outcome of attempt %s was never recorded (its dispatcher was lost, or the '
               'database refused it)', o.attempts) ELSE o.last_error END
      FROM due
      LEFT JOIN menos.owner w ON w.name = due.owner
     WHERE o.event_id = due.event_id
    RETURNING o.event_id, o.job_id, o.owner, o.url, o.payload::text AS payload,
              o.attempts + 1 AS attempts,  -- the number of the attempt being made
              o.created_at,
              CASE WHEN due.lost THEN due.attempts END AS lost_attempt,
              o.last_error,
              -- After a rotation the previous secret signs too, until it expires.
              w.webhook_secret,
              CASE WHEN w.previous_secret_expires_at > coalesce($1::timestamptz, now())
                   THEN w.previous_webhook_secret END AS previous_webhook_secret,
              -- Seconds until another event may be due (as outbox_next_due_in, which a claim
              -- then need not be followed by): the earliest other pending one, or the end of
              -- this hold.
              least((SELECT extract(epoch FROM min(p.next_attempt_at)
                                    - coalesce($1::timestamptz, now()))::float8
                       FROM menos.callback_outbox p
                      WHERE p.status = 'pending'
                        AND p.event_id NOT IN (SELECT event_id FROM due)),
                    $4::float8) AS next_due_in
), audited AS (
    INSERT INTO menos.audit_event (event, owner, actor_key_id, subject, detail)
    SELECT $5, owner, NULL, job_id, jsonb_build_object(
               'event_id', event_id, 'url', url, 'attempt', lost_attempt, 'outcome', 'lost',
               'status_code', NULL, 'error', last_error, 'duration_ms', NULL,
               'status', 'pending')
      FROM claimed
     WHERE lost_attempt IS NOT NULL
     ORDER BY event_id
)
SELECT * FROM claimed;

-- name: count_outbox_attempts
-- Count several claimed attempts ($1: event ids, $2: their attempt numbers) as their requests go out, each guarded by (event, previous count, pending); returns the ids counted.
WITH sending AS (
    SELECT * FROM unnest($1::uuid[], $2::int[]) AS s(event_id, attempts)
),
locked AS MATERIALIZED (
    -- One lock order, as in record_outbox_outcomes: overlapping groups wait, never deadlock.
    SELECT event_id FROM menos.callback_outbox
     WHERE event_id = ANY ($1::uuid[])
     ORDER BY event_id
       FOR UPDATE
)
UPDATE menos.callback_outbox o
   SET attempts = s.attempts, unrecorded_attempt = s.attempts,
       -- Held until this attempt has surely ended ($5: its timeout plus a margin); before the
       -- last attempt also never sooner than the next backoff ($4 × 4^(attempt - 1)), should
       -- the sender die before recording the answer. A recorded outcome sets the real time.
       next_attempt_at = coalesce($3::timestamptz, now()) + make_interval(secs => CASE
           WHEN s.attempts >= $6 THEN $5::float8
           ELSE greatest($4::float8 * 4.0::float8 ^ (s.attempts - 1), $5::float8) END)
  FROM locked l, sending s
 WHERE o.event_id = l.event_id AND s.event_id = l.event_id
   AND o.attempts = s.attempts - 1 AND o.status = 'pending'
RETURNING o.event_id;

-- name: record_outbox_outcomes
-- Record several attempts' outcomes ($1: a JSON array) in one statement, each guarded by (event, attempt, pending) and audited as $2; an attempt not yet counted (its request never went out) is counted here.
WITH outcome AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(
        i int, event_id uuid, attempts int, counted boolean, status_code int, error text,
        at timestamptz,
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
       SET attempts = x.attempts, unrecorded_attempt = NULL,
           status = CASE WHEN x.error IS NULL THEN 'delivered'
                         WHEN x.attempts >= x.max_attempts THEN 'failed' ELSE 'pending' END,
           delivered_at = CASE WHEN x.error IS NULL THEN coalesce(x.at, now())
                               ELSE o.delivered_at END,
           last_status_code = x.status_code,
           last_error = x.error,
           next_attempt_at = CASE WHEN x.error IS NULL OR x.attempts >= x.max_attempts
               THEN o.next_attempt_at
               ELSE coalesce(x.at, now())
                    + make_interval(secs => x.backoff_s * 4.0::float8 ^ (x.attempts - 1)) END
      FROM locked l, outcome x
     WHERE o.event_id = l.event_id AND x.event_id = l.event_id
       AND o.attempts = x.attempts - CASE WHEN x.counted THEN 0 ELSE 1 END
       AND o.status = 'pending'
       -- Not an attempt a claim has since declared lost, nor one recorded already.
       AND (o.unrecorded_attempt = x.attempts
            OR o.unrecorded_attempt IS NULL AND NOT x.counted)
    -- The outcome that was applied: of two for one attempt in a group (the same claim
    -- answered twice) only one updates the row, and only that one may learn its status.
    RETURNING x.i, o.status
),
audited AS (
    -- Every attempt leaves its audit row, recorded or not, in the same transaction.
    INSERT INTO menos.audit_event (event, owner, actor_key_id, subject, detail)
    SELECT $2, x.owner, NULL, x.job_id, x.detail || jsonb_build_object('status', r.status)
      FROM outcome x
      LEFT JOIN recorded r ON r.i = x.i
     ORDER BY x.i
)
SELECT x.i, r.status
  FROM outcome x
  LEFT JOIN recorded r ON r.i = x.i
 ORDER BY x.i;

-- name: fail_exhausted_outbox_events
-- End as failed the events whose last attempt ($2) was counted but never recorded before its hold ran out.
WITH lost AS (
    SELECT event_id FROM menos.callback_outbox
     WHERE status = 'pending' AND attempts >= $2
       AND next_attempt_at <= coalesce($1::timestamptz, now())
     ORDER BY next_attempt_at
     LIMIT 500
       FOR UPDATE SKIP LOCKED
)
UPDATE menos.callback_outbox o
   SET status = 'failed', last_status_code = NULL, unrecorded_attempt = NULL,
       -- Counted as its request went out, or (a failure the database would not store) after
       -- a request that never did; either way its outcome is not known here.
       last_error = format('the outcome of attempt %s was never recorded (its dispatcher '
                           'was lost, or the database refused it)', o.attempts)
  FROM lost
 WHERE o.event_id = lost.event_id
RETURNING o.event_id, o.job_id, o.owner, o.url, o.attempts, o.last_error;

-- name: outbox_next_due_in
-- Seconds until the earliest pending event is due (negative when overdue); null when none waits.
SELECT extract(epoch FROM min(next_attempt_at) - coalesce($1::timestamptz, now()))::float8
  FROM menos.callback_outbox
 WHERE status = 'pending';

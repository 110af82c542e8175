-- Claim up to :batch pending jobs for this client in one statement (FOR UPDATE SKIP LOCKED).
WITH picked AS (
    SELECT id FROM ceiling_job WHERE status = 'pending' ORDER BY id LIMIT :batch
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE ceiling_job j
       SET status = 'processing', attempts = j.attempts + 1, worker = 'w' || :client_id::text,
           claimed_at = now()
      FROM picked
     WHERE j.id = picked.id
    RETURNING j.id
)
SELECT coalesce(array_agg(id), '{}') AS ids FROM claimed
\gset

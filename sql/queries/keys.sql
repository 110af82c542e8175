-- name: ensure_owner
-- Create an owner with its webhook secret unless it exists; returns the owner's secret. The
-- no-op update locks and returns the row a concurrent creation committed (a plain SELECT here
-- would read the statement's snapshot, taken before that commit, and find nothing).
INSERT INTO menos.owner (name, webhook_secret) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET webhook_secret = menos.owner.webhook_secret
RETURNING webhook_secret;

-- name: insert_api_key
-- Store a new key by its hash.
INSERT INTO menos.api_key (key_id, owner, role, key_hash) VALUES ($1, $2, $3, $4)
RETURNING created_at;

-- name: principal_by_hash
-- The live key with this hash.
SELECT key_id, owner, role FROM menos.api_key WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: list_api_keys
-- Every key, optionally of one owner.
SELECT key_id, owner, role, created_at, revoked_at FROM menos.api_key
 WHERE $1::text IS NULL OR owner = $1
 ORDER BY created_at, key_id;

-- name: revoke_api_key
-- Revoke a key; returns it when it was live.
UPDATE menos.api_key SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL
RETURNING key_id;

-- name: rotate_owner_secret
-- Replace an owner's webhook secret; the previous one keeps signing for $3 from $4 (now, the
-- database's unless given: the dispatcher compares with its clock). Returns until when the
-- secret this drops would still have signed, if later than now.
WITH old AS (
    SELECT name, previous_webhook_secret, previous_secret_expires_at
      FROM menos.owner
     WHERE name = $1
       FOR UPDATE  -- a concurrent rotation is then seen as it committed
)
UPDATE menos.owner o
   SET previous_webhook_secret = o.webhook_secret,
       previous_secret_expires_at = coalesce($4::timestamptz, now()) + $3::interval,
       webhook_secret = $2
  FROM old
 WHERE o.name = old.name
RETURNING o.name,
          CASE WHEN old.previous_webhook_secret IS NOT NULL
                AND old.previous_secret_expires_at > coalesce($4::timestamptz, now())
               THEN old.previous_secret_expires_at END AS dropped_secret_expired_at;

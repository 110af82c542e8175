-- name: insert_audit_event
-- Store one audit event.
INSERT INTO menos.audit_event (event, owner, actor_key_id, subject, detail)
VALUES ($1, $2, $3, $4, $5);

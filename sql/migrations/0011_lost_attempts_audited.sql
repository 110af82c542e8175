-- Every callback attempt leaves its audit row, also one whose outcome was never recorded.
--
-- An attempt is counted as its request goes out and recorded when its answer comes back.
-- When its dispatcher died in between (or the database refused the outcome), only a lost
-- last attempt was audited, by the sweep that ends its event `failed`; a lost first or
-- second attempt left no trace once the next attempt went out. unrecorded_attempt names the
-- attempt that was counted and whose outcome is not written yet: the claim of the next
-- attempt finds it, audits it `lost` and clears it, and an outcome arriving after that is
-- refused. Null otherwise, so events counted by a dispatcher older than this column (still
-- running while the schema moves on) are never taken for lost, and adding it rewrites no row.

ALTER TABLE menos.callback_outbox ADD COLUMN unrecorded_attempt integer;

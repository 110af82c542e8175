-- Every callback attempt leaves its audit row, also one whose outcome was never recorded.
--
-- An attempt is counted as its request goes out and recorded when its answer comes back.
-- When its dispatcher died in between (or the database refused the outcome), only a lost
-- last attempt was audited, by the sweep that ends its event `failed`; a lost first or
-- second attempt left no trace once the next attempt went out. recorded_attempts says how
-- many attempts have their outcome written: the claim of the next attempt finds the gap,
-- audits the lost one as `lost` and closes it. Events already here count as recorded.

ALTER TABLE menos.callback_outbox ADD COLUMN recorded_attempts integer NOT NULL DEFAULT 0;
UPDATE menos.callback_outbox SET recorded_attempts = attempts WHERE attempts > 0;

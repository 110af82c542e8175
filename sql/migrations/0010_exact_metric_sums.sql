-- Metric samples are summed exactly.
--
-- /metrics adds every process's cumulative value, and the values of stopped processes are
-- folded into one '(retired)' row. In double precision the total of such a sum depends on
-- how the additions are grouped and ordered, so folding a process, or rewriting a row with
-- the same value, could lower a counter by one rounding step, which Prometheus reads as a
-- counter reset. numeric addition is exact: the total depends only on the values.

ALTER TABLE menos.metric_sample ALTER COLUMN value TYPE numeric;

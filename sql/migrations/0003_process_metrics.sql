-- Cumulative metric samples each worker and dispatcher process flushes, so /metrics (served
-- by bin/api) can report stage durations and callback deliveries across every process.

CREATE TABLE menos.metric_sample (
    process_id text NOT NULL,
    name text NOT NULL,
    labels text NOT NULL DEFAULT '',
    value double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (process_id, name, labels)
);

-- Finished jobs by the time they finished: the retention (jobs.ttl_days)
-- finds those older than the TTL without reading the table.
CREATE INDEX job_finished_idx ON job (finish_ts) WHERE status IN ('COMPLETED', 'ABORTED', 'CANCELLED', 'FAILED');

-- A cancel asked for on a node that does not run the job (a cluster): the
-- node running it sees the flag at its next look (every lease renewal
-- interval) and cancels the run.
ALTER TABLE job ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

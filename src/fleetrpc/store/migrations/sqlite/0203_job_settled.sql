-- Where a job's settled prefix ends: every target up to and including this
-- device id has its outcome stored (NULL: none yet).  Targets between it and
-- the cursor were started and may be unsettled; a restart recovers them by
-- paging the targets in that range.  Per-device rows are now written once,
-- with their outcome (IN_PROGRESS only for calls in flight longer than a
-- second), instead of IN_PROGRESS before the send and updated after.
ALTER TABLE job ADD COLUMN settled_through TEXT;
-- Jobs stored before: their started devices all have IN_PROGRESS rows, which
-- the restart reads anyway; nothing in the range needs recovering.
UPDATE job SET settled_through = cursor;

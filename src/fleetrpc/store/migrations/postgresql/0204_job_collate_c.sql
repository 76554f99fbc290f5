-- A job's keys in code-point order (COLLATE "C"), as the device ids they
-- come from (device.id) and as the engine orders them: under a database
-- created with a language locale (en_US.UTF-8, say), a listing of a job's
-- devices came out in another order than its rollout, and every index
-- comparison went through strcoll().  SQLite compares text bytewise
-- already (code-point order for UTF-8): no migration there.
ALTER TABLE job_device
    ALTER COLUMN job_id TYPE text COLLATE "C",
    ALTER COLUMN device_id TYPE text COLLATE "C",
    ALTER COLUMN outcome TYPE text COLLATE "C";
ALTER TABLE job
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C",
    ALTER COLUMN cursor TYPE text COLLATE "C",
    ALTER COLUMN settled_through TYPE text COLLATE "C";

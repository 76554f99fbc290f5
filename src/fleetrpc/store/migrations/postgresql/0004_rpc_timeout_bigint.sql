-- A persistent call's timeout is accepted up to 10**12 ms (dispatch/options
-- MAX_TIMEOUT_MS), like every other duration, but the column held 32 bits:
-- past 24.8 days the insert failed and REST answered 500, while SQLite (whose
-- integers are 64-bit, hence no twin) stored it.  The rewrite this costs runs
-- once; rpc rows live no longer than the tenant's RPC TTL.
ALTER TABLE rpc ALTER COLUMN timeout_ms TYPE bigint;

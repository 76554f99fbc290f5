-- fleetrpc persistent RPC store, SQLite: initial schema.

-- One row per persistent RPC.  JSON values are TEXT holding JSON.  No
-- index covers status, so a status change rewrites no index entry;
-- load_unfinished() scans the table instead, once per start.
CREATE TABLE rpc (
    id              TEXT    PRIMARY KEY NOT NULL,
    tenant_id       TEXT    NOT NULL,
    device_id       TEXT    NOT NULL,
    created_time    INTEGER NOT NULL,
    expiration_time INTEGER NOT NULL,
    method          TEXT    NOT NULL,
    params          TEXT,
    oneway          INTEGER NOT NULL,
    persisted       INTEGER NOT NULL DEFAULT 1,
    retries         INTEGER NOT NULL DEFAULT 0,
    timeout_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    response        TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('QUEUED', 'SENT', 'DELIVERED',
                        'SUCCESSFUL', 'TIMEOUT', 'EXPIRED', 'FAILED', 'DELETED')),
    additional_info TEXT,
    updated_time    INTEGER NOT NULL,
    error           TEXT
);

-- A device's calls, newest first (the REST listing).
CREATE INDEX rpc_device_created_idx ON rpc (device_id, created_time);

-- TTL purge by creation time.
CREATE INDEX rpc_created_idx ON rpc (created_time);

-- Per-tenant settings (ThingsBoard keeps "RPC TTL days" in the tenant profile).
CREATE TABLE tenant_settings (
    tenant_id    TEXT PRIMARY KEY NOT NULL,
    rpc_ttl_days INTEGER CHECK (rpc_ttl_days >= 0)
);

-- Fleet jobs (fleetrpc.jobs): one RPC to many devices.  JSON values are
-- TEXT holding JSON in both dialects: a device's reply may hold what jsonb
-- refuses (a NUL character), and nothing queries inside these values.

CREATE TABLE job (
    id              TEXT    PRIMARY KEY NOT NULL,
    tenant_id       TEXT    NOT NULL,
    customer_id     TEXT,
    created_by      TEXT,
    spec            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('QUEUED', 'RUNNING', 'COMPLETED',
                        'ABORTED', 'CANCELLED', 'FAILED')),
    counts          TEXT    NOT NULL,
    aggregate       TEXT    NOT NULL,
    cursor          TEXT,
    created_time    INTEGER  NOT NULL,
    start_ts        INTEGER,
    finish_ts       INTEGER,
    cancellation_ts INTEGER,
    general_error   TEXT,
    -- Which node runs the job, and until when its claim holds (clustering).
    owner_node      TEXT,
    lease_until     INTEGER
);

-- A tenant's jobs, newest first (the REST listing).
CREATE INDEX job_tenant_created_idx ON job (tenant_id, created_time);

-- Jobs to resume on start.
CREATE INDEX job_unfinished_idx ON job (status) WHERE status IN ('QUEUED', 'RUNNING');

-- One row per target started: written IN_PROGRESS before the call is sent
-- (so a restart never sends it twice), updated with the outcome.
CREATE TABLE job_device (
    job_id          TEXT    NOT NULL,
    device_id       TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    result          TEXT,
    error           TEXT,
    rpc_id          TEXT,
    start_ts        INTEGER,
    finish_ts       INTEGER,
    PRIMARY KEY (job_id, device_id)
);

-- Per-device results filtered by outcome, in device order.
CREATE INDEX job_device_outcome_idx ON job_device (job_id, outcome, device_id);

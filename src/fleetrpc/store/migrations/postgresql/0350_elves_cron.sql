-- Elves crons: center crons fire from the server, self crons run on the agent.
-- Times are epoch milliseconds.  next_fire is NULL for a stopped cron, a
-- self cron, or a rule that never fires again.
CREATE TABLE IF NOT EXISTS elves_cron (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    agent_ip TEXT NOT NULL,
    cron_type TEXT NOT NULL,
    rule TEXT NOT NULL,
    ins TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    create_time BIGINT NOT NULL,
    next_fire BIGINT,
    last_exec_time BIGINT,
    last_task_id TEXT,
    last_result TEXT
);
CREATE INDEX IF NOT EXISTS elves_cron_due ON elves_cron (next_fire);
CREATE INDEX IF NOT EXISTS elves_cron_ip ON elves_cron (tenant_id, agent_ip);
-- One row per firing of a center cron: the primary key is the claim, so
-- that with several nodes each firing runs exactly once.
CREATE TABLE IF NOT EXISTS elves_cron_firing (
    cron_id TEXT NOT NULL,
    fire_time BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    node TEXT NOT NULL,
    claimed_ms BIGINT NOT NULL,
    task_id TEXT,
    PRIMARY KEY (cron_id, fire_time)
);
CREATE INDEX IF NOT EXISTS elves_cron_firing_task ON elves_cron_firing (task_id);
CREATE INDEX IF NOT EXISTS elves_cron_firing_claimed ON elves_cron_firing (claimed_ms);

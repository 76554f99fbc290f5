-- Elves task log: one row per instruction sent to one agent (rt, cron, queue).
-- Times are epoch milliseconds; flags 1/0 (-1: system error for worker_flag);
-- result_flag 2 = running, 1 = success, 0 = failure.
CREATE TABLE IF NOT EXISTS elves_task (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    type TEXT NOT NULL,
    mode TEXT NOT NULL,
    agent_ip TEXT NOT NULL,
    device TEXT,
    wire_id TEXT NOT NULL,
    app TEXT NOT NULL,
    func TEXT NOT NULL,
    instruct TEXT NOT NULL,
    param TEXT NOT NULL,
    timeout INTEGER NOT NULL,
    proxy TEXT NOT NULL,
    starttime BIGINT NOT NULL,
    agent_sync_flag INTEGER,
    agent_sync_error TEXT,
    agent_sync_costtime INTEGER,
    agent_callback_time BIGINT,
    worker_flag INTEGER,
    worker_message TEXT,
    worker_costtime INTEGER,
    module_sync_flag INTEGER,
    module_sync_error TEXT,
    module_sync_costtime INTEGER,
    module_callback_time BIGINT,
    processor_message TEXT,
    processor_costtime INTEGER,
    endtime BIGINT,
    result_flag INTEGER NOT NULL DEFAULT 2
);
-- An agent reports an async result by the id it was sent (a fan-out shares one).
CREATE INDEX IF NOT EXISTS elves_task_wire ON elves_task (device, wire_id);
CREATE INDEX IF NOT EXISTS elves_task_start ON elves_task (starttime);

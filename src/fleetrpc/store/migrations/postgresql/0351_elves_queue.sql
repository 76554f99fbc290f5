-- Elves queues: tasks with dependencies, run in order on (possibly) many agents.
-- status of a queue: pending (being filled), running (committed), finished, stopped.
CREATE TABLE IF NOT EXISTS elves_queue (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    status TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    commit_time BIGINT,
    end_time BIGINT
);
-- status of a task: pending, running, finish (the worker succeeded),
-- failed (it did not, or its parent failed), stopped.
CREATE TABLE IF NOT EXISTS elves_queue_task (
    id TEXT PRIMARY KEY,
    queue_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    agent_ip TEXT NOT NULL,
    ins TEXT NOT NULL,
    depend_task_id TEXT,
    status TEXT NOT NULL,
    task_log_id TEXT,
    error TEXT,
    worker_flag INTEGER,
    worker_message TEXT,
    worker_costtime INTEGER,
    create_time BIGINT NOT NULL,
    end_time BIGINT
);
CREATE INDEX IF NOT EXISTS elves_queue_task_queue ON elves_queue_task (queue_id);
CREATE INDEX IF NOT EXISTS elves_queue_task_log ON elves_queue_task (task_log_id);

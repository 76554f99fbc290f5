-- A task's end asks for its pending children (queue.py, QueueRepository.children):
-- by index, not by reading the whole queue.
CREATE INDEX IF NOT EXISTS elves_queue_task_parent ON elves_queue_task (queue_id, depend_task_id);

-- A task's end asks for its pending children (queue.py, QueueRepository.children)
-- and whether any task of its queue is unfinished (QueueRepository.unfinished):
-- by index, not by reading the whole queue (with the queue's index alone, the
-- second read every finished row of the queue at each task's end).
CREATE INDEX IF NOT EXISTS elves_queue_task_parent ON elves_queue_task (queue_id, depend_task_id);
CREATE INDEX IF NOT EXISTS elves_queue_task_status ON elves_queue_task (queue_id, status);

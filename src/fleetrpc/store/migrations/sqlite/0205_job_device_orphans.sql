-- Per-device rows of jobs that no longer exist: a job deleted while its run
-- was storing its last outcomes lost its rows, and the run's write then
-- stored them again (fixed: a write now updates the job first and stores no
-- row without it).  Nothing can list or delete these rows; they go.
DELETE FROM job_device WHERE NOT EXISTS (SELECT 1 FROM job WHERE job.id = job_device.job_id);

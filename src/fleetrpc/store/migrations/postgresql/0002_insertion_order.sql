-- Insertion order: calls created in the same millisecond must still be
-- recovered (and so re-sent) in the order they were made, for per-device FIFO.
ALTER TABLE rpc ADD COLUMN seq bigserial;

-- Which node drives an unfinished call, and until when (epoch ms; NULL:
-- the claim does not lapse).  Recorded on insert and on recovery; several
-- nodes sharing the database will claim calls whose lease lapsed.
ALTER TABLE rpc ADD COLUMN owner_node TEXT;
ALTER TABLE rpc ADD COLUMN lease_until INTEGER;

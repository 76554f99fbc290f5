-- Which node drives an unfinished call, and until when (epoch ms; NULL:
-- the claim does not lapse).  Recorded on insert and on recovery; several
-- nodes sharing the database will claim calls whose lease lapsed.  Neither
-- column is indexed: status changes stay HOT updates (see 0001).
ALTER TABLE rpc ADD COLUMN owner_node text COLLATE "C";
ALTER TABLE rpc ADD COLUMN lease_until bigint;

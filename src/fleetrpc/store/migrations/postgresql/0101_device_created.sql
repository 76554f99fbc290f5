-- Every node of a cluster asks now and then which devices were created
-- since it last looked (server/registered.py): by creation time, across
-- tenants.
CREATE INDEX device_created_idx ON device (created_time);

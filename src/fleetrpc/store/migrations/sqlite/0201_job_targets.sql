-- Fleet jobs resolve their targets in device-id order, a page after the
-- last one (keyset paging): a tenant's devices by id, without a sort.
CREATE INDEX device_tenant_id_idx ON device (tenant_id, id);

-- Elves supervisor: app keys (auth id + key per app) and what they may touch.
CREATE TABLE IF NOT EXISTS elves_app (
    tenant_id TEXT NOT NULL,
    app TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    auth_key TEXT NOT NULL,
    callback_ip TEXT,
    callback_port INTEGER,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, app)
);
-- Auth ids and keys identify an app across tenants (an MQTT caller has no tenant yet).
CREATE UNIQUE INDEX IF NOT EXISTS elves_app_auth_id ON elves_app (auth_id);
CREATE UNIQUE INDEX IF NOT EXISTS elves_app_auth_key ON elves_app (auth_key);
-- kind: 'ip' (an agent IP, or 'all'), 'main_cat' / 'sub_cat' (a CMDB category, or 'all').
CREATE TABLE IF NOT EXISTS elves_grant (
    tenant_id TEXT NOT NULL,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tenant_id, app, kind, value)
);

-- Elves CMDB: asset data per agent IP, imported from CSV (cmdbproxy).
CREATE TABLE IF NOT EXISTS elves_cmdb (
    tenant_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    sn TEXT NOT NULL,
    iplist TEXT NOT NULL,
    idc TEXT NOT NULL,
    main_cat TEXT NOT NULL,
    sub_cat TEXT NOT NULL,
    app_info TEXT NOT NULL,
    manager TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, ip)
);

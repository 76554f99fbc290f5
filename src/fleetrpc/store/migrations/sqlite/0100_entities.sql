-- fleetrpc entities, SQLite: tenants, customers, users, devices and their
-- access-token credentials (ThingsBoard's shapes; migrations 100-199).

-- Ids are UUID text.  JSON values (additional_info) are TEXT holding JSON.
-- A missing tenant or customer is ThingsBoard's null UUID, as there: equality
-- finds "unassigned" like any owner, through the same indexes.
CREATE TABLE tenant (
    id              TEXT    PRIMARY KEY NOT NULL,
    created_time    INTEGER NOT NULL,
    title           TEXT    NOT NULL,
    region          TEXT,
    country         TEXT,
    state           TEXT,
    city            TEXT,
    address         TEXT,
    address2        TEXT,
    zip             TEXT,
    phone           TEXT,
    email           TEXT,
    additional_info TEXT,
    version         INTEGER NOT NULL DEFAULT 1
);

CREATE INDEX tenant_created_idx ON tenant (created_time, id);

-- Titles are unique per tenant ("Customer with such title already exists!").
CREATE TABLE customer (
    id              TEXT    PRIMARY KEY NOT NULL,
    tenant_id       TEXT    NOT NULL,
    created_time    INTEGER NOT NULL,
    title           TEXT    NOT NULL,
    country         TEXT,
    state           TEXT,
    city            TEXT,
    address         TEXT,
    address2        TEXT,
    zip             TEXT,
    phone           TEXT,
    email           TEXT,
    additional_info TEXT,
    version         INTEGER NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, title)
);

CREATE INDEX customer_tenant_created_idx ON customer (tenant_id, created_time, id);

-- Emails are stored lower-case and unique across the system (they are the
-- login name).  tenant_id is the null UUID for system administrators.  locked_until
-- is epoch ms; failed_login_attempts counts failures since the last success.
CREATE TABLE tb_user (
    id                    TEXT    PRIMARY KEY NOT NULL,
    tenant_id             TEXT    NOT NULL DEFAULT '13814000-1dd2-11b2-8080-808080808080',
    customer_id           TEXT    NOT NULL DEFAULT '13814000-1dd2-11b2-8080-808080808080',
    created_time          INTEGER NOT NULL,
    email                 TEXT    NOT NULL UNIQUE,
    authority             TEXT    NOT NULL CHECK (authority IN ('SYS_ADMIN', 'TENANT_ADMIN', 'CUSTOMER_USER')),
    first_name            TEXT,
    last_name             TEXT,
    phone                 TEXT,
    additional_info       TEXT,
    password_hash         TEXT,
    enabled               INTEGER NOT NULL DEFAULT 1,
    failed_login_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until          INTEGER NOT NULL DEFAULT 0,
    last_login_time       INTEGER,
    version               INTEGER NOT NULL DEFAULT 1
);

CREATE INDEX tb_user_tenant_idx ON tb_user (tenant_id, customer_id, created_time, id);

-- Names are unique per tenant ("Device with such name already exists!").
-- Listing is paged per tenant, optionally per customer or type, ordered by
-- creation time (default), name, type or label: one index per way in.
CREATE TABLE device (
    id                 TEXT    PRIMARY KEY NOT NULL,
    tenant_id          TEXT    NOT NULL,
    customer_id        TEXT    NOT NULL DEFAULT '13814000-1dd2-11b2-8080-808080808080',
    created_time       INTEGER NOT NULL,
    name               TEXT    NOT NULL,
    type               TEXT    NOT NULL,
    label              TEXT,
    additional_info    TEXT,
    version            INTEGER NOT NULL DEFAULT 1,
    last_activity_time INTEGER,
    UNIQUE (tenant_id, name)
);

CREATE INDEX device_tenant_created_idx ON device (tenant_id, created_time, id);
CREATE INDEX device_tenant_customer_idx ON device (tenant_id, customer_id, created_time, id);
CREATE INDEX device_tenant_type_idx ON device (tenant_id, type, created_time, id);

-- One access-token credential per device; the token is what a device sends
-- as its MQTT username, so it is unique across the system.
CREATE TABLE device_credentials (
    id                TEXT    PRIMARY KEY NOT NULL,
    device_id         TEXT    NOT NULL UNIQUE,
    created_time      INTEGER NOT NULL,
    credentials_type  TEXT    NOT NULL CHECK (credentials_type IN ('ACCESS_TOKEN')),
    credentials_id    TEXT    NOT NULL UNIQUE,
    version           INTEGER NOT NULL DEFAULT 1
);

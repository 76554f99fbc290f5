-- fleetrpc entities, PostgreSQL: tenants, customers, users, devices and
-- their access-token credentials (ThingsBoard's shapes; migrations 100-199).

-- Ids are UUID text with the "C" collation, like the rpc table (byte order:
-- SQLite's order, and the cheapest comparisons).  Names and titles use "C"
-- too, so that sorting by name pages the same way on both backends.
-- JSON values are jsonb.  A missing tenant or customer is ThingsBoard's
-- null UUID, as there: equality finds "unassigned" like any owner, through
-- the same indexes.
CREATE TABLE tenant (
    id              text COLLATE "C" PRIMARY KEY,
    created_time    bigint  NOT NULL,
    title           text COLLATE "C" NOT NULL,
    region          text,
    country         text,
    state           text,
    city            text,
    address         text,
    address2        text,
    zip             text,
    phone           text,
    email           text,
    additional_info jsonb,
    version         bigint  NOT NULL DEFAULT 1
);

CREATE INDEX tenant_created_idx ON tenant (created_time, id);

-- Titles are unique per tenant ("Customer with such title already exists!").
CREATE TABLE customer (
    id              text COLLATE "C" PRIMARY KEY,
    tenant_id       text COLLATE "C" NOT NULL,
    created_time    bigint  NOT NULL,
    title           text COLLATE "C" NOT NULL,
    country         text,
    state           text,
    city            text,
    address         text,
    address2        text,
    zip             text,
    phone           text,
    email           text,
    additional_info jsonb,
    version         bigint  NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, title)
);

CREATE INDEX customer_tenant_created_idx ON customer (tenant_id, created_time, id);

-- Emails are stored lower-case and unique across the system (they are the
-- login name).  tenant_id is the null UUID for system administrators.  locked_until
-- is epoch ms; failed_login_attempts counts failures since the last success.
CREATE TABLE tb_user (
    id                    text COLLATE "C" PRIMARY KEY,
    tenant_id             text COLLATE "C" NOT NULL DEFAULT '13814000-1dd2-11b2-8080-808080808080',
    customer_id           text COLLATE "C" NOT NULL DEFAULT '13814000-1dd2-11b2-8080-808080808080',
    created_time          bigint  NOT NULL,
    email                 text COLLATE "C" NOT NULL UNIQUE,
    authority             text    NOT NULL CHECK (authority IN ('SYS_ADMIN', 'TENANT_ADMIN', 'CUSTOMER_USER')),
    first_name            text,
    last_name             text,
    phone                 text,
    additional_info       jsonb,
    password_hash         text,
    enabled               boolean NOT NULL DEFAULT true,
    failed_login_attempts integer NOT NULL DEFAULT 0,
    locked_until          bigint  NOT NULL DEFAULT 0,
    last_login_time       bigint,
    version               bigint  NOT NULL DEFAULT 1
);

CREATE INDEX tb_user_tenant_idx ON tb_user (tenant_id, customer_id, created_time, id);

-- Names are unique per tenant ("Device with such name already exists!").
-- Listing is paged per tenant, optionally per customer or type, ordered by
-- creation time (default), name, type or label: one index per way in.
CREATE TABLE device (
    id                 text COLLATE "C" PRIMARY KEY,
    tenant_id          text COLLATE "C" NOT NULL,
    customer_id        text COLLATE "C" NOT NULL DEFAULT '13814000-1dd2-11b2-8080-808080808080',
    created_time       bigint  NOT NULL,
    name               text COLLATE "C" NOT NULL,
    type               text COLLATE "C" NOT NULL,
    label              text COLLATE "C",
    additional_info    jsonb,
    version            bigint  NOT NULL DEFAULT 1,
    last_activity_time bigint,
    UNIQUE (tenant_id, name)
);

CREATE INDEX device_tenant_created_idx ON device (tenant_id, created_time, id);
CREATE INDEX device_tenant_customer_idx ON device (tenant_id, customer_id, created_time, id);
CREATE INDEX device_tenant_type_idx ON device (tenant_id, type, created_time, id);

-- One access-token credential per device; the token is what a device sends
-- as its MQTT username, so it is unique across the system.
CREATE TABLE device_credentials (
    id                text COLLATE "C" PRIMARY KEY,
    device_id         text COLLATE "C" NOT NULL UNIQUE,
    created_time      bigint  NOT NULL,
    credentials_type  text    NOT NULL CHECK (credentials_type IN ('ACCESS_TOKEN')),
    credentials_id    text COLLATE "C" NOT NULL UNIQUE,
    version           bigint  NOT NULL DEFAULT 1
);

-- API keys (ThingsBoard 4.3's ApiKey): a long-lived credential of one user,
-- sent as "X-Authorization: ApiKey <value>".  The value itself is never
-- stored: value_hash is the hex SHA-256 of it (the value is 64 random bytes,
-- so a fast hash is as good as a slow one; see store/entities/api_keys.py).
-- tenant_id is the user's (the null UUID for a system administrator).
CREATE TABLE api_key (
    id              text COLLATE "C" PRIMARY KEY,
    tenant_id       text COLLATE "C" NOT NULL,
    user_id         text COLLATE "C" NOT NULL,
    created_time    bigint  NOT NULL,
    expiration_time bigint  NOT NULL DEFAULT 0,
    description     text    NOT NULL,
    enabled         boolean NOT NULL DEFAULT false,
    value_hash      text COLLATE "C" NOT NULL UNIQUE
);

-- A user's keys, one page at a time.
CREATE INDEX api_key_user_idx ON api_key (user_id, created_time, id);

-- However a user row goes (the user, its customer or its tenant deleted, by
-- any code or by hand), its keys go with it.
CREATE FUNCTION api_key_on_user_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM api_key WHERE user_id = OLD.id; RETURN OLD; END $$;

CREATE TRIGGER tb_user_api_keys_on_delete AFTER DELETE ON tb_user
    FOR EACH ROW EXECUTE FUNCTION api_key_on_user_delete();

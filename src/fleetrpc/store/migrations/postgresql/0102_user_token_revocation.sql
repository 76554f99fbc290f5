-- Token revocation (ThingsBoard's TokenOutdatingService): when a user is
-- deleted, disabled or changes password, every token issued to it before
-- valid_since (epoch ms) stops working, on every node (api/auth.py keeps
-- this table in memory).  A row outlives its user (a deleted user's tokens
-- stay refused); rows older than the longest token lifetime say nothing
-- any more and are purged.
CREATE TABLE user_token_revocation (
    user_id     text COLLATE "C" PRIMARY KEY,
    valid_since bigint NOT NULL
);

-- Nodes read what changed since they last looked.
CREATE INDEX user_token_revocation_since_idx ON user_token_revocation (valid_since);

-- However a user row goes (the user, its customer or its tenant deleted, by
-- any code or by hand), its tokens go with it.  The nodes learn of it by
-- reading the table (the repository's own deletes also notify at once).
CREATE FUNCTION user_token_revocation_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO user_token_revocation (user_id, valid_since) VALUES (OLD.id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) ON CONFLICT (user_id) DO UPDATE SET valid_since = GREATEST(user_token_revocation.valid_since, excluded.valid_since); RETURN OLD; END $$;

CREATE TRIGGER tb_user_revoke_on_delete AFTER DELETE ON tb_user
    FOR EACH ROW EXECUTE FUNCTION user_token_revocation_on_delete();

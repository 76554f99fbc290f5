-- Token revocation (ThingsBoard's TokenOutdatingService): when a user is
-- deleted, disabled or changes password, every token issued to it before
-- valid_since (epoch ms) stops working, on every node (api/auth.py keeps
-- this table in memory).  A row outlives its user (a deleted user's tokens
-- stay refused); rows older than the longest token lifetime say nothing
-- any more and are purged.
CREATE TABLE user_token_revocation (
    user_id     TEXT    PRIMARY KEY NOT NULL,
    valid_since INTEGER NOT NULL
);

-- Nodes read what changed since they last looked.
CREATE INDEX user_token_revocation_since_idx ON user_token_revocation (valid_since);

-- However a user row goes (the user, its customer or its tenant deleted, by
-- any code or by hand), its tokens go with it.  The nodes learn of it by
-- reading the table (the repository's own deletes tell this node at once).
CREATE TRIGGER tb_user_revoke_on_delete AFTER DELETE ON tb_user
BEGIN
    INSERT OR REPLACE INTO user_token_revocation (user_id, valid_since) VALUES (OLD.id, max(CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), COALESCE((SELECT valid_since FROM user_token_revocation WHERE user_id = OLD.id), 0))); END;

-- Every change to a credential (created, rotated, revoked), in order. Relay
-- processes sharing the store poll it to close revoked or rotated-out
-- sessions and drop cached credentials; it doubles as the admin audit trail.
CREATE TABLE IF NOT EXISTS credential_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,    -- 'token' or 'key'
    credential_id TEXT NOT NULL,
    event         TEXT NOT NULL,    -- 'created', 'rotated', 'revoked'
    at            INTEGER NOT NULL
);

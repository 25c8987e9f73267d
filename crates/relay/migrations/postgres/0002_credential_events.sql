-- Every change to a credential (created, rotated, revoked), in order. Relay
-- processes sharing the store poll it to close revoked or rotated-out
-- sessions and drop cached credentials; it doubles as the admin audit trail.
CREATE TABLE IF NOT EXISTS credential_events (
    seq           BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    event         TEXT NOT NULL,
    at            BIGINT NOT NULL
);

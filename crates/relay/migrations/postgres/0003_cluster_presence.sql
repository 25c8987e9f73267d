-- Cluster mode: which relay replica holds which agent sessions. A replica
-- renews its lease by heartbeat; the others ignore its sessions once the
-- lease has ended. Times are milliseconds of the database's clock, so
-- replicas' clocks need not agree.
CREATE TABLE IF NOT EXISTS cluster_replicas (
    replica_id  TEXT PRIMARY KEY,
    advertise   TEXT NOT NULL,
    heartbeat   BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS cluster_sessions (
    replica_id TEXT NOT NULL REFERENCES cluster_replicas (replica_id) ON DELETE CASCADE,
    session_id BIGINT NOT NULL,
    account    TEXT NOT NULL,
    agent      TEXT NOT NULL,
    instance   TEXT NOT NULL,
    tags       TEXT NOT NULL,
    routes     TEXT NOT NULL,
    forward    BOOLEAN NOT NULL,
    PRIMARY KEY (replica_id, session_id)
);

CREATE INDEX IF NOT EXISTS cluster_sessions_account ON cluster_sessions (account);

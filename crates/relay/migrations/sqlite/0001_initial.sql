-- Accounts exist once they hold a token or a key.
CREATE TABLE IF NOT EXISTS accounts (
    name    TEXT PRIMARY KEY,
    created INTEGER NOT NULL
);

-- Agent tokens. Only SHA-256 hashes of the secret part are stored.
-- prev_hash / prev_until hold the replaced secret during a rotation's grace.
CREATE TABLE IF NOT EXISTS agent_tokens (
    id         TEXT PRIMARY KEY,
    account    TEXT NOT NULL REFERENCES accounts(name),
    name       TEXT,
    hash       BLOB NOT NULL,
    created    INTEGER NOT NULL,
    last_used  INTEGER,
    expires    INTEGER,
    revoked    INTEGER,
    prev_hash  BLOB,
    prev_until INTEGER
);
CREATE INDEX IF NOT EXISTS agent_tokens_account ON agent_tokens(account);

-- Caller API keys, hashed the same way.
CREATE TABLE IF NOT EXISTS api_keys (
    id        TEXT PRIMARY KEY,
    account   TEXT NOT NULL REFERENCES accounts(name),
    name      TEXT,
    hash      BLOB NOT NULL,
    created   INTEGER NOT NULL,
    last_used INTEGER,
    revoked   INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account);

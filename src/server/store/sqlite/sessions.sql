-- Schema version 4: the web console's sessions (run after schema.sql on every open).
-- A session id is kept as its SHA-256, the API key as its SHA-256; rows expire.
CREATE TABLE IF NOT EXISTS console_sessions (
    session_hash BLOB PRIMARY KEY,
    key_digest   BLOB NOT NULL,
    csrf         BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS console_sessions_by_expiry ON console_sessions (expires_at);

-- The web console's sessions. A session id is kept as its SHA-256, the API key as its
-- SHA-256 (resolved again on every request); rows expire.
CREATE TABLE console_sessions (
    session_hash bytea PRIMARY KEY,
    key_digest   bytea NOT NULL,
    csrf         bytea NOT NULL,
    created_at   bigint NOT NULL,
    expires_at   bigint NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);

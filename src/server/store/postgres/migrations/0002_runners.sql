-- Schema version 2 of the PostgreSQL store: runner presence (`store::RunnerSeen`), as
-- SQLite's schema version 3. One row per runner, named as tasks name their claimant;
-- every replica's presence flush upserts it, the newest contact winning.

CREATE TABLE runners (
    runner        text PRIMARY KEY,
    kind          bigint NOT NULL,
    cluster       text NOT NULL,
    key_name      text NOT NULL,
    hostname      text NOT NULL,
    version       text NOT NULL,
    slots         bigint NOT NULL,
    free_slots    bigint NOT NULL,
    -- [[name, version], …]
    identifiers   jsonb NOT NULL,
    first_seen_at bigint NOT NULL,
    last_seen_at  bigint NOT NULL
);
CREATE INDEX runners_by_last_seen ON runners (last_seen_at);

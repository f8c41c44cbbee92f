-- The SQLite schema of the orchestrator's store. Rows reference each other by integer
-- rowid; UUIDs are what the API shows. A database written before a change here is brought
-- up to date when opened (`counters.rs`, `upgrade`; the version is `PRAGMA user_version`).

CREATE TABLE IF NOT EXISTS clusters (
    slug        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    deletable   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    job              INTEGER PRIMARY KEY,
    uuid             BLOB NOT NULL UNIQUE,
    name             TEXT NOT NULL,
    trace_parent     TEXT NOT NULL,
    state            INTEGER NOT NULL,
    submitted_at     INTEGER NOT NULL,
    total_tasks      INTEGER NOT NULL,
    -- tasks not yet complete (computed with all descendants done, failed-optional or skipped)
    incomplete_tasks INTEGER NOT NULL,
    running_tasks    INTEGER NOT NULL DEFAULT 0,
    ever_started     INTEGER NOT NULL DEFAULT 0,
    -- execution statistics, kept as tasks start and stop (`counters.rs`): earliest
    -- started_at of a task, compute time of ended attempts, and the sum of
    -- attempt_started_at over running tasks
    first_started_at    INTEGER,
    compute_ms          INTEGER NOT NULL DEFAULT 0,
    running_started_sum INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_submission ON jobs (submitted_at);

CREATE TABLE IF NOT EXISTS tasks (
    task               INTEGER PRIMARY KEY,
    uuid               BLOB NOT NULL UNIQUE,
    job                INTEGER NOT NULL,
    parent             INTEGER,
    name               TEXT NOT NULL,
    version            TEXT NOT NULL,
    major              INTEGER NOT NULL,
    minor              INTEGER NOT NULL,
    cluster            TEXT NOT NULL,
    input              BLOB NOT NULL,
    display            TEXT NOT NULL,
    state              INTEGER NOT NULL,
    retry_count        INTEGER NOT NULL DEFAULT 0,
    max_retries        INTEGER NOT NULL,
    optional           INTEGER NOT NULL,
    -- nearest optional ancestor (excluding the task itself)
    optional_scope     INTEGER,
    -- on an optional task: a task in its subtree failed, so the rest of it is skipped
    scope_failed       INTEGER NOT NULL DEFAULT 0,
    pending_deps       INTEGER NOT NULL,
    pending_children   INTEGER NOT NULL DEFAULT 0,
    has_children       INTEGER NOT NULL DEFAULT 0,
    -- 0 while the job is failed or canceled: nothing of it is handed out
    job_active         INTEGER NOT NULL DEFAULT 1,
    claimant           TEXT,
    -- set when the task was handed out again after a lost lease: reports must come from
    -- the current claimant
    fenced             INTEGER NOT NULL DEFAULT 0,
    lease_expires_at   INTEGER,
    lease_losses       INTEGER NOT NULL DEFAULT 0,
    -- non-workflow failures reported since the last retry of the job (schema version 2)
    runner_failures    INTEGER NOT NULL DEFAULT 0,
    submitted_at       INTEGER NOT NULL,
    started_at         INTEGER,
    stopped_at         INTEGER,
    attempt_started_at INTEGER,
    compute_ms         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_claimable ON tasks (cluster, name, major, task)
    WHERE state = 1 AND pending_deps = 0 AND job_active = 1;
CREATE INDEX IF NOT EXISTS tasks_by_parent ON tasks (job, parent, task);
CREATE INDEX IF NOT EXISTS tasks_leased ON tasks (lease_expires_at) WHERE state = 2;
-- what a job retry re-queues
CREATE INDEX IF NOT EXISTS tasks_failed ON tasks (job) WHERE state = 4;
-- a job's latest stop: MAX(stopped_at) of a job is one probe
CREATE INDEX IF NOT EXISTS tasks_stopped ON tasks (job, stopped_at) WHERE stopped_at IS NOT NULL;

-- How many tasks of a job are in each state (`counters.rs`).
CREATE TABLE IF NOT EXISTS job_task_states (
    job   INTEGER NOT NULL,
    state INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (job, state)
) WITHOUT ROWID;

-- The clusters a job has tasks on.
CREATE TABLE IF NOT EXISTS job_clusters (
    job     INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    PRIMARY KEY (job, cluster)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS task_dependencies (
    depends_on INTEGER NOT NULL,
    task       INTEGER NOT NULL,
    PRIMARY KEY (depends_on, task)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS task_dependencies_by_task ON task_dependencies (task, depends_on);

CREATE TABLE IF NOT EXISTS task_progress (
    task     INTEGER NOT NULL,
    position INTEGER NOT NULL,
    label    TEXT,
    total    INTEGER NOT NULL,
    done     INTEGER NOT NULL,
    PRIMARY KEY (task, position)
) WITHOUT ROWID;

-- A job's progress per label (`counters.rs`): sums over its tasks' task_progress rows, how
-- many rows, and the smallest task * 4096 + position among them (the order labels are
-- listed in). One row per (job, label); a NULL label is matched with IS.
CREATE TABLE IF NOT EXISTS job_progress (
    job     INTEGER NOT NULL,
    label   TEXT,
    total   INTEGER NOT NULL,
    done    INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    first   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS job_progress_by_label ON job_progress (job, label);

CREATE TABLE IF NOT EXISTS workflows (
    slug        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    summary     TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS artifacts (
    digest     TEXT PRIMARY KEY,
    uuid       BLOB NOT NULL UNIQUE,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS releases (
    release     INTEGER PRIMARY KEY,
    uuid        BLOB NOT NULL UNIQUE,
    workflow    TEXT NOT NULL,
    artifact    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    content     BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (workflow, artifact, fingerprint)
);

-- At most one release per workflow per cluster.
CREATE TABLE IF NOT EXISTS deployments (
    cluster     TEXT NOT NULL,
    workflow    TEXT NOT NULL,
    release     INTEGER NOT NULL,
    deployed_at INTEGER NOT NULL,
    PRIMARY KEY (cluster, workflow)
);
CREATE INDEX IF NOT EXISTS deployments_by_release ON deployments (release);

-- Logs (kind 0) and spans (kind 1), each one record encoded as a single-record OTLP
-- ResourceLogs / ResourceSpans; a job's records are those with its trace id.
CREATE TABLE IF NOT EXISTS telemetry (
    record         INTEGER PRIMARY KEY,
    uuid           BLOB NOT NULL UNIQUE,
    kind           INTEGER NOT NULL,
    trace_id       BLOB NOT NULL,
    task_id        TEXT,
    severity       INTEGER NOT NULL,
    time_unix_nano INTEGER NOT NULL,
    received_at    INTEGER NOT NULL,
    encoded        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_by_trace ON telemetry (kind, trace_id, record);
CREATE INDEX IF NOT EXISTS telemetry_by_age ON telemetry (received_at);

-- Runner presence (schema version 3; `store::RunnerSeen`): each runner's latest contact, as
-- the servers' presence flushes it. `runner` is the claimant tasks name it by.
CREATE TABLE IF NOT EXISTS runners (
    runner        TEXT PRIMARY KEY,
    kind          INTEGER NOT NULL,
    cluster       TEXT NOT NULL,
    key_name      TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    version       TEXT NOT NULL,
    slots         INTEGER NOT NULL,
    free_slots    INTEGER NOT NULL,
    -- JSON [[name, version], …]
    identifiers   TEXT NOT NULL,
    first_seen_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runners_by_last_seen ON runners (last_seen_at);

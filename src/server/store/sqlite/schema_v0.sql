-- The schema before the per-job counters (PRAGMA user_version 0), verbatim: a database
-- written by that version has this shape. Tests open one to check the upgrade (counters.rs).

-- The SQLite schema of the orchestrator's store. Rows reference each other by integer
-- rowid; UUIDs are what the API shows.

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
    ever_started     INTEGER NOT NULL DEFAULT 0
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
CREATE INDEX IF NOT EXISTS tasks_by_job_state ON tasks (job, state);

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

-- Schema version 1 of the PostgreSQL store: the tables, columns and meaning of the SQLite
-- schema (`sqlite/schema.sql`), in PostgreSQL's types. Rows reference each other by
-- bigint identity; UUIDs are what the API shows. Times are milliseconds since the epoch.

CREATE TABLE clusters (
    slug        text PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    deletable   boolean NOT NULL,
    created_at  bigint NOT NULL
);

CREATE TABLE jobs (
    job              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid             uuid NOT NULL UNIQUE,
    name             text NOT NULL,
    trace_parent     text NOT NULL,
    state            bigint NOT NULL,
    submitted_at     bigint NOT NULL,
    total_tasks      bigint NOT NULL,
    -- tasks not yet complete (computed with all descendants done, failed-optional or skipped)
    incomplete_tasks bigint NOT NULL,
    running_tasks    bigint NOT NULL DEFAULT 0,
    ever_started     boolean NOT NULL DEFAULT false,
    -- execution statistics, kept as tasks start and stop: earliest started_at of a task,
    -- compute time of ended attempts, and the sum of attempt_started_at over running tasks
    first_started_at    bigint,
    compute_ms          bigint NOT NULL DEFAULT 0,
    running_started_sum bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
CREATE INDEX jobs_by_submission ON jobs (submitted_at);

-- Every state change updates an indexed column, so no update of a task is HOT: leave room
-- in each page and vacuum often.
CREATE TABLE tasks (
    task               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid               uuid NOT NULL UNIQUE,
    job                bigint NOT NULL,
    parent             bigint,
    name               text NOT NULL,
    version            text NOT NULL,
    major              bigint NOT NULL,
    minor              bigint NOT NULL,
    cluster            text NOT NULL,
    input              bytea NOT NULL,
    display            text NOT NULL,
    state              bigint NOT NULL,
    retry_count        bigint NOT NULL DEFAULT 0,
    max_retries        bigint NOT NULL,
    optional           boolean NOT NULL,
    -- nearest optional ancestor (excluding the task itself)
    optional_scope     bigint,
    -- on an optional task: a task in its subtree failed, so the rest of it is skipped
    scope_failed       boolean NOT NULL DEFAULT false,
    pending_deps       bigint NOT NULL,
    pending_children   bigint NOT NULL DEFAULT 0,
    has_children       boolean NOT NULL DEFAULT false,
    -- false while the job is failed or canceled: nothing of it is handed out
    job_active         boolean NOT NULL DEFAULT true,
    claimant           text,
    -- set when the task was handed out again after a lost lease: reports must come from
    -- the current claimant
    fenced             boolean NOT NULL DEFAULT false,
    lease_expires_at   bigint,
    lease_losses       bigint NOT NULL DEFAULT 0,
    -- non-workflow failures reported since the last retry of the job
    runner_failures    bigint NOT NULL DEFAULT 0,
    submitted_at       bigint NOT NULL,
    started_at         bigint,
    stopped_at         bigint,
    attempt_started_at bigint,
    compute_ms         bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX tasks_claimable ON tasks (cluster, name, major, task)
    WHERE state = 1 AND pending_deps = 0 AND job_active;
CREATE INDEX tasks_by_parent ON tasks (job, parent, task);
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE state = 2;
-- what a job retry re-queues
CREATE INDEX tasks_failed ON tasks (job) WHERE state = 4;
-- a job's latest stop: MAX(stopped_at) of a job is one probe
CREATE INDEX tasks_stopped ON tasks (job, stopped_at) WHERE stopped_at IS NOT NULL;

-- How many tasks of a job are in each state.
CREATE TABLE job_task_states (
    job   bigint NOT NULL,
    state bigint NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (job, state)
);

-- The clusters a job has tasks on.
CREATE TABLE job_clusters (
    job     bigint NOT NULL,
    cluster text NOT NULL,
    PRIMARY KEY (job, cluster)
);

CREATE TABLE task_dependencies (
    depends_on bigint NOT NULL,
    task       bigint NOT NULL,
    PRIMARY KEY (depends_on, task)
);
CREATE INDEX task_dependencies_by_task ON task_dependencies (task, depends_on);

CREATE TABLE task_progress (
    task     bigint NOT NULL,
    position bigint NOT NULL,
    label    text,
    total    bigint NOT NULL,
    done     bigint NOT NULL,
    PRIMARY KEY (task, position)
);

-- A job's progress per label: sums over its tasks' task_progress rows, how many rows, and
-- the smallest task * 4096 + position among them (the order labels are listed in). One
-- row per (job, label); a NULL label is one label too.
CREATE TABLE job_progress (
    job     bigint NOT NULL,
    label   text,
    total   bigint NOT NULL,
    done    bigint NOT NULL,
    entries bigint NOT NULL,
    first   bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (job, label)
);

CREATE TABLE workflows (
    slug        text PRIMARY KEY,
    name        text NOT NULL,
    summary     text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    created_at  bigint NOT NULL
);

CREATE TABLE artifacts (
    digest     text PRIMARY KEY,
    uuid       uuid NOT NULL UNIQUE,
    size       bigint NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE releases (
    release     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid        uuid NOT NULL UNIQUE,
    workflow    text NOT NULL,
    artifact    text NOT NULL,
    fingerprint text NOT NULL,
    content     bytea NOT NULL,
    created_at  bigint NOT NULL,
    UNIQUE (workflow, artifact, fingerprint)
);

-- At most one release per workflow per cluster.
CREATE TABLE deployments (
    cluster     text NOT NULL,
    workflow    text NOT NULL,
    release     bigint NOT NULL,
    deployed_at bigint NOT NULL,
    PRIMARY KEY (cluster, workflow)
);
CREATE INDEX deployments_by_release ON deployments (release);

-- Logs (kind 0) and spans (kind 1), each one record encoded as a single-record OTLP
-- ResourceLogs / ResourceSpans; a job's records are those with its trace id. Several
-- replicas insert at once, so identities commit out of order: `xid` (the inserting
-- transaction) lets a reader following a trace return only records whose transactions
-- every snapshot sees as finished, in (xid, record) order.
CREATE TABLE telemetry (
    record         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid           uuid NOT NULL UNIQUE,
    kind           bigint NOT NULL,
    trace_id       bytea NOT NULL,
    task_id        text,
    severity       bigint NOT NULL,
    time_unix_nano bigint NOT NULL,
    received_at    bigint NOT NULL,
    encoded        bytea NOT NULL,
    xid            xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX telemetry_by_trace ON telemetry (kind, trace_id, record);
-- what a follower pages with: ascending reads order by (xid, record)
CREATE INDEX telemetry_by_trace_commit ON telemetry (kind, trace_id, xid, record);
CREATE INDEX telemetry_by_age ON telemetry (received_at);

-- Artifact bytes, so every replica can serve every release: an upload writes its chunks
-- under its own id; once its digest and size are verified it becomes the digest's blob.
CREATE TABLE artifact_uploads (
    upload     uuid PRIMARY KEY,
    started_at bigint NOT NULL
);
CREATE TABLE artifact_chunks (
    upload uuid NOT NULL,
    seq    bigint NOT NULL,
    bytes  bytea NOT NULL,
    PRIMARY KEY (upload, seq)
);
-- Artifacts are zstd archives already: compressing them again costs CPU for nothing.
ALTER TABLE artifact_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL;
CREATE TABLE artifact_blobs (
    digest text PRIMARY KEY,
    upload uuid NOT NULL,
    size   bigint NOT NULL
);

//! Durable state of the orchestrator behind one trait, [`Store`], so SQLite (embedded
//! default) and PostgreSQL (scale-out) are interchangeable. Each method is one atomic
//! operation; what a method acknowledged is on disk before it returns.
//!
//! The scheduling rules that touch several rows at once (dependencies, optional scopes,
//! retries, lease expiry, job state) are part of the contract: every backend runs the same
//! conformance suite (`conformance/`).
//!
//! Layout:
//! - `mod.rs`: the trait, its records and `Error`
//! - `sqlite/`: the SQLite backend (WAL, full sync, group commit on one writer thread):
//!   `mod.rs` (connections, the writer, the trait), `tasks.rs` (submit, claim, report, fail,
//!   leases, retry, cancel), `counters.rs` (per-job counters), `read.rs` (queries),
//!   `releases.rs` (workflows, artifacts, releases, deployments, telemetry), `schema.sql`
//! - `rules.rs`: the pure rules both backends share (claimant, failure reasons, claims)
//! - `conformance/`: the suite every backend passes, by area (tests only)

#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
mod rules;
pub mod sqlite;

use std::time::Duration;

use uuid::Uuid;

use crate::api::workflows_v1::{JobState, TaskState};

pub use crate::api::submission::{Identifier, NewTask};

pub type Result<T, E = Error> = std::result::Result<T, E>;
/// A backend's own error (rusqlite's, tokio-postgres'), kept as the cause.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The slug of the cluster every store creates on first open; `""` means this cluster.
pub const DEFAULT_CLUSTER_SLUG: &str = "default";
/// How many times a task whose lease expired is handed out again before it fails.
pub const MAX_LEASE_REQUEUES: i64 = 10;
/// How many times a task whose runner reported it could not run it (a non-workflow
/// failure) is handed out again before it fails: a task that breaks every runner it meets
/// must not take them over forever.
pub const MAX_RUNNER_FAILURE_REQUEUES: i64 = 10;

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster `{slug}` not found")]
    ClusterNotFound { slug: String },
    #[error("cluster `{slug}` already exists")]
    ClusterExists { slug: String },
    #[error("cluster `{slug}` cannot be deleted: {reason}")]
    ClusterNotDeletable { slug: String, reason: &'static str },
    #[error("job {id} not found")]
    JobNotFound { id: Uuid },
    #[error("task {id} not found")]
    TaskNotFound { id: Uuid },
    #[error("workflow `{slug}` not found")]
    WorkflowNotFound { slug: String },
    #[error("workflow `{slug}` already exists")]
    WorkflowExists { slug: String },
    #[error("release {id} of workflow `{workflow}` not found")]
    ReleaseNotFound { workflow: String, id: Uuid },
    #[error("artifact {0} not found")]
    ArtifactNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error(
        "the database's disk is full ({code}) in {operation}: nothing of this write was stored; free space where the database keeps its data and retry"
    )]
    StorageFull {
        operation: &'static str,
        /// The backend's name for the condition (`SQLITE_FULL`, PostgreSQL's `53100`).
        code: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("database error in {operation}")]
    Database {
        operation: &'static str,
        #[source]
        source: BackendError,
    },
    /// The database could not be reached, or the connection was lost before the operation
    /// was known to commit: nothing is promised either way, and the caller may retry.
    #[error("the database is unavailable in {operation}; retry")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: BackendError,
    },
    /// Text the database cannot hold (PostgreSQL refuses NUL characters in text).
    #[error("{operation}: the text holds a character the database cannot store (NUL); remove it")]
    Unstorable {
        operation: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("cannot open the database at {target}")]
    Open {
        /// The file, or the server and database (never a password).
        target: String,
        #[source]
        source: BackendError,
    },
    #[error(
        "the database at {target} has schema version {found}, newer than version {supported} that this tilebox knows: upgrade tilebox to serve it"
    )]
    SchemaTooNew {
        target: String,
        found: i64,
        supported: i64,
    },
    #[error("cannot create the data directory {path}")]
    DataDirectory {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is shut down")]
    Closed,
}

/// A cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub deletable: bool,
}

/// A job to insert with its root tasks.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub name: String,
    pub trace_parent: String,
    pub tasks: Vec<NewTask>,
}

/// A progress indicator of one task (or, summed, of a job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub label: Option<String>,
    pub total: u64,
    pub done: u64,
}

/// Execution statistics of a job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionStats {
    pub first_task_started_at: Option<i64>,
    pub last_task_stopped_at: Option<i64>,
    pub compute_time: Duration,
    pub elapsed_time: Duration,
    pub parallelism: f64,
    pub total_tasks: u64,
    /// Counts of tasks per state, only states with at least one task, in enum order.
    pub tasks_by_state: Vec<(TaskState, u64)>,
}

/// A job as readers see it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub name: String,
    pub trace_parent: String,
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub submitted_at: i64,
    pub progress: Vec<Progress>,
    pub stats: ExecutionStats,
}

/// One task as `ListJobTasks` shows it.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub display: String,
    pub state: TaskState,
    pub identifier: Identifier,
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub input: Vec<u8>,
    pub retry_count: i64,
    pub max_retries: i64,
    pub has_children: bool,
    pub cluster: String,
    pub optional: bool,
    /// Who claimed the task's latest attempt (`runner:<key>/<runner id>` for our runner,
    /// `host:<key>@<ip>:<port>` for the official SDK; see `services::caller`); kept after the
    /// task ends, cleared when a job retry queues it again. `None` before the first claim.
    pub claimant: Option<String>,
}

/// What a runner asks for: tasks on `cluster` that one of `identifiers` can run.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub cluster: String,
    /// The runner's advertised identifiers.
    pub identifiers: Vec<Identifier>,
    /// Who claims (runner id, or the connection's peer address).
    pub claimant: String,
    pub lease: Duration,
}

/// A task handed to a runner.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: Uuid,
    /// The runner's advertised identifier that matched (same name and major, minor ≥ submitted).
    pub identifier: Identifier,
    pub input: Vec<u8>,
    pub display: String,
    pub parent_id: Option<Uuid>,
    pub depends_on: Vec<Uuid>,
    pub retry_count: i64,
    pub lease: Duration,
    pub job: Job,
}

/// A runner's report that a task computed.
#[derive(Debug, Clone)]
pub struct ComputedReport {
    pub task_id: Uuid,
    pub claimant: String,
    pub display: String,
    pub progress: Vec<Progress>,
    /// Validated subtasks (their `id`s are fresh).
    pub subtasks: Vec<NewTask>,
}

/// A runner's report that a task failed.
#[derive(Debug, Clone)]
pub struct FailedReport {
    pub task_id: Uuid,
    pub claimant: String,
    pub display: String,
    /// True when the task's own code failed (counts against `max_retries`); false when the
    /// runner could not run it (re-queued without counting a retry, up to
    /// [`MAX_RUNNER_FAILURE_REQUEUES`] times; the next such failure fails it).
    pub workflow_error: bool,
    pub progress: Vec<Progress>,
}

/// A runner's report that it gives a claimed task back without having run it (it is
/// shutting down, the host that was to run it went down with an earlier task, or the release
/// it was claimed for was replaced): re-queued at once, counting neither a retry nor a runner
/// failure, however often it happens.
#[derive(Debug, Clone)]
pub struct HandedBackReport {
    pub task_id: Uuid,
    pub claimant: String,
    /// The task's display from now on.
    pub display: String,
}

/// A finished task, as a runner reports it (or a task it hands back unrun).
#[derive(Debug, Clone)]
pub enum Report {
    Computed(ComputedReport),
    Failed(FailedReport),
    HandedBack(HandedBackReport),
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The report was applied; the task is now in this state.
    Applied(TaskState),
    /// The report was ignored: the task is no longer this claimant's running attempt (its
    /// lease expired and it was handed out again, or it already ended).
    Stale(TaskState),
}

/// Filters of `query_jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub name_contains: Option<String>,
    pub clusters: Vec<String>,
    /// Milliseconds since the epoch; half-open [from, to).
    pub submitted_from: Option<i64>,
    pub submitted_to: Option<i64>,
    /// Job ids within these bounds, compared in UUID byte order (time order for the v7 ids
    /// the server gives jobs).
    pub ids: IdBounds,
}

/// Bounds on job ids; unbounded on both ends by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdBounds {
    pub start: std::ops::Bound<Uuid>,
    pub end: std::ops::Bound<Uuid>,
}

impl Default for IdBounds {
    fn default() -> Self {
        Self {
            start: std::ops::Bound::Unbounded,
            end: std::ops::Bound::Unbounded,
        }
    }
}

/// A page request: items after `after` (exclusive), at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub after: Option<Uuid>,
    pub limit: usize,
    pub descending: bool,
}

/// A workflow: a named project whose releases are deployed to clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    pub slug: String,
    pub name: String,
    pub summary: String,
    pub description: String,
}

/// An uploaded release artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub id: Uuid,
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
}

/// A published release of a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: Uuid,
    pub workflow: String,
    pub artifact: Artifact,
    pub fingerprint: String,
    /// The release content (`workflows.v1.ReleaseContent`), encoded; opaque to the store.
    pub content: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Slugs of the clusters it is deployed to.
    pub clusters: Vec<String>,
}

/// Which kind of telemetry record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryKind {
    Log = 0,
    Span = 1,
}

/// One log record or span to keep, encoded (a single-record OTLP `ResourceLogs` or
/// `ResourceSpans`; opaque to the store) with what queries filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryRecord {
    pub id: Uuid,
    /// The 16-byte trace id: a job's records share its trace id.
    pub trace_id: Vec<u8>,
    pub task_id: Option<String>,
    /// OTLP severity number (logs; 0 for spans).
    pub severity: i32,
    pub time_unix_nano: i64,
    pub encoded: Vec<u8>,
}

/// A signed-in console session (the web console's login). The store keeps no secret: the
/// session id (the cookie) is kept as its SHA-256, and the key as its SHA-256, which the
/// server resolves again on every request, so a revoked key ends its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the session id the browser holds.
    pub session_hash: [u8; 32],
    /// SHA-256 of the API key the session acts as.
    pub key_digest: [u8; 32],
    /// The token the session's forms carry.
    pub csrf: [u8; 32],
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch; from then on the session is gone.
    pub expires_at: i64,
}

/// Which runner program a runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunnerKind {
    /// Our runner (`tilebox runner start`), on the batched `Work` protocol.
    Tilebox = 1,
    /// The official SDK's runner, on `NextTask`.
    Sdk = 2,
}

impl RunnerKind {
    /// The kind stored as `number`; unknown numbers read as the SDK's.
    pub fn from_number(number: i64) -> Self {
        if number == RunnerKind::Tilebox as i64 {
            RunnerKind::Tilebox
        } else {
            RunnerKind::Sdk
        }
    }
}

/// A runner's latest contact, as presence keeps it (`server::presence`): who it is, what it
/// advertised, and when it was first and last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSeen {
    /// The runner as tasks name their claimant (`runner:<key>/<id>`, `host:<key>@<ip>:<port>`).
    pub runner: String,
    pub kind: RunnerKind,
    /// The cluster it asks for work of (a slug; the default cluster's spelled out).
    pub cluster: String,
    /// The name of the API key it calls with (empty on an open server).
    pub key_name: String,
    /// The host it says it runs on (empty when it did not say: the SDK's runner).
    pub hostname: String,
    /// Its program's version (empty when it did not say).
    pub version: String,
    /// Its slots; 0 once it said it stops (its last call), which no running runner has.
    pub slots: u32,
    /// Slots without a task at its latest contact.
    pub free_slots: u32,
    /// The task identifiers it advertised: (name, version).
    pub identifiers: Vec<(String, String)>,
    /// Milliseconds since the Unix epoch.
    pub first_seen_at: i64,
    pub last_seen_at: i64,
}

/// The durable state of the orchestrator.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_cluster(&self, cluster: Cluster) -> Result<Cluster>;
    async fn get_cluster(&self, slug: &str) -> Result<Cluster>;
    async fn list_clusters(&self) -> Result<Vec<Cluster>>;
    async fn update_cluster(
        &self,
        slug: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<Cluster>;
    /// Deletes a cluster and its deployments; refused for the default cluster and while
    /// tasks are queued or running on it.
    async fn delete_cluster(&self, slug: &str) -> Result<()>;

    /// Inserts a job and its root tasks; every task's cluster must exist.
    async fn submit_job(&self, job: NewJob) -> Result<Job>;
    async fn get_job(&self, id: Uuid) -> Result<Job>;
    async fn query_jobs(&self, filter: JobFilter, page: Page) -> Result<Vec<Job>>;
    /// Direct children of `parent` (the root tasks when `None`), in submission order.
    async fn list_tasks(
        &self,
        job: Uuid,
        parent: Option<Uuid>,
        page: Page,
    ) -> Result<Vec<TaskSummary>>;
    /// The tasks of `job` among `ids`, in the order of `ids`; ids that are not tasks of
    /// `job` are left out (one indexed probe each: a page's worth, not a job's).
    async fn get_tasks(&self, job: Uuid, ids: Vec<Uuid>) -> Result<Vec<TaskSummary>>;
    /// Marks failed tasks queued again and resumes the job; returns how many were re-queued.
    async fn retry_job(&self, id: Uuid) -> Result<i64>;
    /// Stops the job: no queued task starts any more; running ones finish.
    async fn cancel_job(&self, id: Uuid) -> Result<()>;
    async fn job_state_counts(&self) -> Result<Vec<(JobState, u64)>>;

    /// In one transaction: applies `report` (if any), then claims a task for `claim` (if any).
    async fn report_and_claim(
        &self,
        report: Option<ComputedReport>,
        claim: Option<ClaimRequest>,
    ) -> Result<(Option<ReportOutcome>, Option<ClaimedTask>)>;
    async fn fail_task(&self, report: FailedReport) -> Result<ReportOutcome>;
    /// In one transaction: applies each report on its own (one that fails, e.g. for an
    /// unknown task, leaves the others applied), then claims, for each `(claim, count)` in
    /// order, up to `count` tasks, oldest first. Answers one result per report, in order,
    /// and the claimed tasks.
    async fn report_and_claim_batch(
        &self,
        reports: Vec<Report>,
        claims: Vec<(ClaimRequest, usize)>,
    ) -> Result<(Vec<Result<ReportOutcome>>, Vec<ClaimedTask>)>;
    /// Extends a running task's lease to `lease` from now; `None` if it is not running or
    /// not `claimant`'s.
    async fn extend_lease(
        &self,
        task: Uuid,
        claimant: String,
        lease: Duration,
    ) -> Result<Option<Duration>>;
    /// Extends several running tasks' leases, each to its `lease` from now, in one
    /// transaction; `None` for a task that is not running or not `claimant`'s.
    async fn extend_leases(
        &self,
        leases: Vec<(Uuid, Duration)>,
        claimant: String,
    ) -> Result<Vec<Option<Duration>>>;
    /// Re-queues (or, after `MAX_LEASE_REQUEUES`, fails) running tasks whose lease ended
    /// before `now_millis`; returns how many tasks it touched.
    async fn expire_leases(&self, now_millis: i64) -> Result<usize>;
    /// The earliest lease deadline of a running task, if any.
    async fn next_lease_deadline(&self) -> Result<Option<i64>>;

    async fn create_workflow(&self, workflow: Workflow) -> Result<Workflow>;
    async fn get_workflow(&self, slug: &str) -> Result<Workflow>;
    async fn list_workflows(&self) -> Result<Vec<Workflow>>;
    async fn update_workflow(
        &self,
        slug: &str,
        name: Option<String>,
        summary: Option<String>,
        description: Option<String>,
    ) -> Result<Workflow>;
    /// Deletes a workflow with its releases; refused while a release is deployed.
    async fn delete_workflow(&self, slug: &str) -> Result<()>;

    /// Records an artifact (idempotent by digest: the existing record is answered).
    async fn register_artifact(&self, digest: String, size: u64) -> Result<Artifact>;
    async fn get_artifact(&self, digest: Option<String>, id: Option<Uuid>) -> Result<Artifact>;

    /// Publishes a release; publishing the same artifact and fingerprint again answers the
    /// existing release.
    async fn publish_release(
        &self,
        workflow: &str,
        artifact: Uuid,
        fingerprint: String,
        content: Vec<u8>,
    ) -> Result<Release>;
    /// Releases of a workflow, newest first.
    async fn list_releases(&self, workflow: &str) -> Result<Vec<Release>>;
    async fn get_release(&self, workflow: &str, id: Uuid) -> Result<Release>;
    /// Removes a release; refused while it is deployed.
    async fn unpublish_release(&self, workflow: &str, id: Uuid) -> Result<()>;
    /// Deploys a release to clusters, replacing the workflow's release there.
    async fn deploy_release(
        &self,
        workflow: &str,
        id: Uuid,
        clusters: Vec<String>,
    ) -> Result<Release>;
    /// Removes a release from clusters (where it is deployed).
    async fn undeploy_release(
        &self,
        workflow: &str,
        id: Uuid,
        clusters: Vec<String>,
    ) -> Result<Release>;
    /// The releases deployed to a cluster, one per workflow, by workflow slug.
    async fn cluster_deployments(&self, cluster: &str) -> Result<Vec<Release>>;

    // ---- console sessions (schema version 4 / PostgreSQL console_sessions) ----
    /// Stores a new console session (idempotent: storing the same session again changes
    /// nothing).
    async fn create_console_session(&self, session: ConsoleSession) -> Result<()>;
    /// The session whose id hashes to `session_hash`, unless it expired at or before
    /// `now_millis`.
    async fn get_console_session(
        &self,
        session_hash: [u8; 32],
        now_millis: i64,
    ) -> Result<Option<ConsoleSession>>;
    /// Ends a session (a logout); answers whether there was one.
    async fn delete_console_session(&self, session_hash: [u8; 32]) -> Result<bool>;
    /// Deletes the sessions expired at or before `now_millis`; answers how many.
    async fn delete_expired_console_sessions(&self, now_millis: i64) -> Result<usize>;
    // ---- end of console sessions ----

    async fn insert_telemetry(
        &self,
        kind: TelemetryKind,
        records: Vec<TelemetryRecord>,
    ) -> Result<()>;
    /// Records of a trace in arrival order (or reversed), optionally of one task and within
    /// severity ranges (inclusive; none: all): (id, encoded) pairs.
    async fn query_telemetry(
        &self,
        kind: TelemetryKind,
        trace_id: Vec<u8>,
        task_id: Option<String>,
        severities: Vec<(i32, i32)>,
        page: Page,
    ) -> Result<Vec<(Uuid, Vec<u8>)>>;
    /// How many of a trace's first `limit` records (in arrival order) have each severity:
    /// (severity, count) pairs, by severity. Bounded, so a job with millions of records costs
    /// no more than `limit`; a sum of `limit` means there may be more.
    async fn count_telemetry_by_severity(
        &self,
        kind: TelemetryKind,
        trace_id: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(i32, u64)>>;
    /// Deletes records received before the given time; answers how many.
    async fn delete_telemetry_before(&self, received_before_millis: i64) -> Result<usize>;

    /// The cluster of each of `tasks` (`None` for an unknown task), in order: what a runner
    /// key's reports and lease extensions are checked against.
    async fn task_clusters(&self, tasks: Vec<Uuid>) -> Result<Vec<Option<String>>>;

    /// Records runners' contacts (upserts by `runner`): a contact replaces what is stored
    /// unless the stored one is newer (replicas flush in any order), and `first_seen_at`
    /// keeps the earliest. Not synced on its own: presence is advisory.
    async fn record_runners(&self, runners: Vec<RunnerSeen>) -> Result<()>;
    /// Runners last seen at or after `seen_since` (milliseconds since the epoch), of
    /// `cluster` when given: the 10,000 seen last, newest first (the table is only cleaned
    /// after a day, and a hostile key could fill it with runner ids).
    async fn list_runners(
        &self,
        cluster: Option<String>,
        seen_since: i64,
    ) -> Result<Vec<RunnerSeen>>;
    /// Forgets runners last seen before `seen_before`; answers how many.
    async fn delete_runners_before(&self, seen_before: i64) -> Result<usize>;
}

//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, so an acknowledged
//! write survives `kill -9` and power loss. Claims and lease extensions alone are not synced
//! (`Durability::Relaxed`): they survive `kill -9`, and a power loss at worst hands a task
//! out again.
//!
//! Writes run on one dedicated thread that batches whatever is waiting into one transaction
//! (group commit): each operation runs inside its own savepoint, so a failing one rolls back
//! alone, and every caller gets its answer only after the shared `COMMIT` returned. The
//! queue to the writer is bounded ([`WRITE_QUEUE`]): when it is full, callers wait for room
//! (backpressure) instead of piling up memory. A full disk (`SQLITE_FULL`) is its own error
//! ([`Error::StorageFull`]); when SQLite rolls the whole transaction back on it, the rest of
//! the batch is not run and every operation of the batch is answered with the error, so
//! none half-applies. Reads
//! use a small pool of separate connections, which WAL lets run beside the writer.
//!
//! Layout:
//! - `mod.rs`: connections, the writer thread, the `Store` implementation
//! - `tasks.rs`: the transactional task logic (insert, claim, complete, fail, expire)
//! - `counters.rs`: per-job counters the reads use instead of passes over the tasks
//! - `read.rs`: row mapping and read queries
//! - `releases.rs`: workflows, artifacts, releases and deployments
//! - `runners.rs`: runner presence (the `runners` table)
//! - `schema.sql`: tables and indexes; `schema_v0.sql`: the schema before the counters
//!   (tests open a database of that shape)
//! - `sessions.rs`, `sessions.sql`: the web console's sessions (schema version 4)

mod counters;
#[cfg(test)]
mod drain;
mod read;
mod releases;
mod runners;
mod sessions;
mod tasks;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    Artifact, ClaimRequest, ClaimedTask, Cluster, ComputedReport, ConsoleSession,
    DEFAULT_CLUSTER_SLUG, Error, FailedReport, Job, JobFilter, NewJob, Page, Release, Report,
    ReportOutcome, Result, RunnerSeen, Store, TaskSummary, TelemetryKind, TelemetryRecord,
    Workflow,
};
use crate::api::convert::now_millis;
use crate::api::workflows_v1::JobState;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "tilebox.sqlite3";
/// At most this many operations share one transaction.
const MAX_BATCH: usize = 512;
/// At most this many operations wait for the writer; more callers wait to enqueue.
const WRITE_QUEUE: usize = 2 * MAX_BATCH;

const SCHEMA: &str = include_str!("schema.sql");

/// Maps a rusqlite error to a store error naming the operation.
pub(super) fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |source| {
        if is_disk_full(&source) {
            Error::StorageFull {
                operation,
                code: "SQLITE_FULL",
                source: Box::new(source),
            }
        } else {
            Error::Database {
                operation,
                source: Box::new(source),
            }
        }
    }
}

/// The SQLite error code a store error carries, if it came from SQLite.
fn sqlite_code(error: &Error) -> Option<rusqlite::ffi::Error> {
    match error {
        Error::StorageFull { source, .. } | Error::Database { source, .. } => source
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error)
            .copied(),
        _ => None,
    }
}

fn open_failed(path: &Path) -> impl Fn(rusqlite::Error) -> Error + Copy + '_ {
    move |source| Error::Open {
        target: path.display().to_string(),
        source: Box::new(source),
    }
}

fn is_disk_full(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Runs a statement prepared once per connection: the writer runs the same few statements
/// for every task, and parsing one costs about as much as running it.
pub(super) fn execute(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(params)
}

/// The one row of a statement prepared once per connection (see [`execute`]).
pub(super) fn query_row<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(params, map)
}

type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
/// An operation for the writer: given the connection it runs and answers a finisher; given
/// an error (the transaction could not begin, or was lost before its turn) it does not run.
/// Besides its finisher it answers the SQLite error code its own failure carried, if any.
type WriteOperation = (
    Box<
        dyn FnOnce(
                std::result::Result<&Connection, &rusqlite::Error>,
            ) -> (Finish, Option<rusqlite::ffi::Error>)
            + Send,
    >,
    Durability,
);

/// Whether a write must be on disk before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Synced before it is answered (`synchronous=FULL`): submissions, reports, everything a
    /// client is told is done.
    Synced,
    /// Written to the WAL but not synced on its own (`synchronous=NORMAL`): claims and lease
    /// extensions. A killed process loses none of it (the OS has the WAL); a machine that
    /// loses power may lose it, and then the task is claimed again, as at-least-once delivery
    /// allows. The next synced commit syncs it too.
    Relaxed,
}

/// The SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteOperation>>>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        fs_err::create_dir_all(data_dir).map_err(|source| Error::DataDirectory {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let connection = open_connection(&path, false)?;
        let found: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_failed(&path))?;
        if found > counters::SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                target: path.display().to_string(),
                found,
                supported: counters::SCHEMA_VERSION,
            });
        }
        connection
            .execute_batch(SCHEMA)
            .and_then(|()| connection.execute_batch(sessions::SCHEMA))
            .and_then(|()| counters::upgrade(&connection))
            .map_err(open_failed(&path))?;
        connection
            .execute(
                "INSERT OR IGNORE INTO clusters (slug, name, description, deletable, created_at)
                 VALUES (?1, 'Default', 'The cluster tasks run on when none is named', 0, ?2)",
                params![DEFAULT_CLUSTER_SLUG, now_millis()],
            )
            .map_err(open_failed(&path))?;
        let (sender, receiver) = mpsc::channel::<WriteOperation>(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".to_string())
            .spawn(move || run_writer(connection, receiver))
            .map_err(|source| Error::DataDirectory {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Some(sender)),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `operation` inside the writer's next transaction; answers after the commit.
    async fn write<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_with(Durability::Synced, operation).await
    }

    /// Like [`write`](Self::write), for a write that need not be synced on its own (see
    /// [`Durability::Relaxed`]).
    async fn write_relaxed<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_with(Durability::Relaxed, operation).await
    }

    async fn write_with<T, F>(&self, durability: Durability, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T>>();
        let job = Box::new(
            move |connection: std::result::Result<&Connection, &rusqlite::Error>| {
                let result = match connection {
                    Ok(connection) => in_savepoint(connection, operation),
                    Err(error) => Err(batch_failed(error)),
                };
                let code = result.as_ref().err().and_then(sqlite_code);
                let finish: Finish = Box::new(move |batch_error| {
                    let result = match batch_error {
                        None => result,
                        Some(error) => Err(batch_failed(error)),
                    };
                    let _ = answer.send(result);
                });
                (finish, code)
            },
        );
        let sender = self
            .inner
            .writer
            .lock()
            .map_err(|_| Error::Closed)?
            .clone()
            .ok_or(Error::Closed)?;
        // Waits while the queue is full: backpressure on every writer.
        sender
            .send((job, durability))
            .await
            .map_err(|_| Error::Closed)?;
        answered.await.map_err(|_| Error::Closed)?
    }

    /// Runs `operation` on a read connection from the pool.
    async fn read<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().map_err(|_| Error::Closed)?.pop();
            let connection = match pooled {
                Some(connection) => connection,
                None => open_connection(&inner.path, true)?,
            };
            let result = operation(&connection);
            if let Ok(mut readers) = inner.readers.lock() {
                readers.push(connection);
            }
            result
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let open_error = open_failed(path);
    let connection = Connection::open_with_flags(path, flags).map_err(open_error)?;
    connection
        .busy_timeout(Duration::from_secs(10))
        .map_err(open_error)?;
    if !read_only {
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;",
            )
            .map_err(open_error)?;
    }
    // Every statement the writer runs, so none is parsed again.
    connection.set_prepared_statement_cache_capacity(128);
    Ok(connection)
}

fn in_savepoint<T>(
    connection: &Connection,
    operation: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    execute(connection, "SAVEPOINT operation", []).map_err(db("savepoint"))?;
    let result = operation(connection);
    if result.is_err() && connection.is_autocommit() {
        // SQLite rolled the whole transaction back (a full disk): the savepoint is gone, and
        // the operation's own error (`StorageFull`) is the one to answer, not "no such
        // savepoint".
        return result;
    }
    let end = if result.is_ok() {
        execute(connection, "RELEASE operation", []).map(|_| ())
    } else {
        connection.execute_batch("ROLLBACK TO operation; RELEASE operation")
    };
    end.map_err(db("savepoint"))?;
    result
}

/// Runs one item of a batch in its own savepoint: an item that fails is rolled back alone
/// and its error answered in its place; only a failing savepoint statement fails the batch.
fn in_item_savepoint<T>(
    connection: &Connection,
    item: impl FnOnce(&Connection) -> Result<T>,
) -> Result<Result<T>> {
    connection
        .execute_batch("SAVEPOINT item")
        .map_err(db("savepoint"))?;
    let result = item(connection);
    if connection.is_autocommit() {
        // SQLite rolled the whole transaction back: the batch fails with the item's error.
        if let Err(error) = result {
            return Err(error);
        }
    }
    let end = if result.is_ok() {
        "RELEASE item"
    } else {
        "ROLLBACK TO item; RELEASE item"
    };
    connection.execute_batch(end).map_err(db("savepoint"))?;
    Ok(result)
}

/// The error an operation is answered with when its batch failed as a whole.
fn batch_failed(error: &rusqlite::Error) -> Error {
    let copy = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error {
            code: error
                .sqlite_error_code()
                .unwrap_or(rusqlite::ErrorCode::Unknown),
            extended_code: error
                .sqlite_error()
                .map_or(rusqlite::ffi::SQLITE_ERROR, |error| error.extended_code),
        },
        Some(error.to_string()),
    );
    db("commit")(copy)
}

fn run_writer(connection: Connection, mut receiver: mpsc::Receiver<WriteOperation>) {
    // The connection opens with `synchronous = FULL`.
    let mut synced = true;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(_) => break,
            }
        }
        // A batch is synced at its commit when any of its writes must be.
        let sync = batch
            .iter()
            .any(|(_, durability)| *durability == Durability::Synced);
        if sync != synced {
            let pragma = if sync {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            match connection.execute_batch(pragma) {
                Ok(()) => synced = sync,
                Err(error) => tracing::error!(%error, "cannot set the sync mode"),
            }
        }
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(%error, "cannot begin a write transaction");
            // Nothing runs; every operation is answered with the error.
            for (operation, _) in batch {
                operation(Err(&error)).0(None);
            }
            continue;
        }
        let mut finishers: Vec<Finish> = Vec::with_capacity(batch.len());
        let mut lost: Option<rusqlite::Error> = None;
        for (operation, _) in batch {
            if let Some(error) = &lost {
                finishers.push(operation(Err(error)).0);
                continue;
            }
            let (finish, code) = operation(Ok(&connection));
            finishers.push(finish);
            if connection.is_autocommit() {
                // SQLite rolled the whole transaction back (it may on a full disk or an I/O
                // error): what ran so far is gone, and what follows must not run outside a
                // transaction.
                let error = rusqlite::Error::SqliteFailure(
                    code.unwrap_or(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT)),
                    Some("the write transaction was rolled back by SQLite".to_string()),
                );
                tracing::error!(%error, "the write transaction was lost; failing its batch");
                lost = Some(error);
            }
        }
        if let Some(error) = lost {
            finishers
                .into_iter()
                .for_each(|finish| finish(Some(&error)));
            continue;
        }
        match connection.execute_batch("COMMIT") {
            Ok(()) => finishers.into_iter().for_each(|finish| finish(None)),
            Err(error) => {
                tracing::error!(%error, "commit failed; rolling back the batch");
                let _ = connection.execute_batch("ROLLBACK");
                finishers
                    .into_iter()
                    .for_each(|finish| finish(Some(&error)));
            }
        }
    }
}

fn row_to_cluster(row: &rusqlite::Row<'_>) -> rusqlite::Result<Cluster> {
    Ok(Cluster {
        slug: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        deletable: row.get(3)?,
    })
}

pub(super) fn get_cluster(connection: &Connection, slug: &str) -> Result<Cluster> {
    connection
        .prepare_cached("SELECT slug, name, description, deletable FROM clusters WHERE slug = ?1")
        .and_then(|mut statement| statement.query_row([slug], row_to_cluster).optional())
        .map_err(db("get cluster"))?
        .ok_or_else(|| Error::ClusterNotFound {
            slug: slug.to_string(),
        })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_cluster(&self, cluster: Cluster) -> Result<Cluster> {
        self.write(move |connection| {
            let inserted = connection
                .execute(
                    "INSERT OR IGNORE INTO clusters (slug, name, description, deletable, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![cluster.slug, cluster.name, cluster.description, cluster.deletable, now_millis()],
                )
                .map_err(db("create cluster"))?;
            if inserted == 0 {
                return Err(Error::ClusterExists { slug: cluster.slug });
            }
            Ok(cluster)
        })
        .await
    }

    async fn task_clusters(&self, tasks: Vec<Uuid>) -> Result<Vec<Option<String>>> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare_cached("SELECT cluster FROM tasks WHERE uuid = ?1")
                .map_err(db("read task clusters"))?;
            tasks
                .iter()
                .map(|task| {
                    statement
                        .query_row([task.as_bytes()], |row| row.get(0))
                        .optional()
                        .map_err(db("read task clusters"))
                })
                .collect()
        })
        .await
    }

    async fn get_cluster(&self, slug: &str) -> Result<Cluster> {
        let slug = slug.to_string();
        self.read(move |connection| get_cluster(connection, &slug))
            .await
    }

    async fn list_clusters(&self) -> Result<Vec<Cluster>> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached("SELECT slug, name, description, deletable FROM clusters ORDER BY created_at, slug")
                .map_err(db("list clusters"))?;
            let clusters = statement
                .query_map([], row_to_cluster)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(db("list clusters"))?;
            Ok(clusters)
        })
        .await
    }

    async fn update_cluster(
        &self,
        slug: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<Cluster> {
        let slug = slug.to_string();
        self.write(move |connection| {
            let mut cluster = get_cluster(connection, &slug)?;
            if let Some(name) = name {
                cluster.name = name;
            }
            if let Some(description) = description {
                cluster.description = description;
            }
            connection
                .execute(
                    "UPDATE clusters SET name = ?2, description = ?3 WHERE slug = ?1",
                    params![slug, cluster.name, cluster.description],
                )
                .map_err(db("update cluster"))?;
            Ok(cluster)
        })
        .await
    }

    async fn delete_cluster(&self, slug: &str) -> Result<()> {
        let slug = slug.to_string();
        self.write(move |connection| {
            let cluster = get_cluster(connection, &slug)?;
            if !cluster.deletable {
                return Err(Error::ClusterNotDeletable { slug, reason: "it is the default cluster" });
            }
            let waiting: i64 = connection
                .query_row(
                    "SELECT COUNT(*) FROM tasks WHERE cluster = ?1 AND state IN (1, 2) AND job_active = 1",
                    [&slug],
                    |row| row.get(0),
                )
                .map_err(db("delete cluster"))?;
            if waiting > 0 {
                return Err(Error::ClusterNotDeletable { slug, reason: "tasks are queued or running on it" });
            }
            connection
                .execute("DELETE FROM clusters WHERE slug = ?1", [&slug])
                .map_err(db("delete cluster"))?;
            // Its deployments go with it (they would otherwise pin their releases forever).
            connection
                .execute("DELETE FROM deployments WHERE cluster = ?1", [&slug])
                .map_err(db("delete cluster"))?;
            Ok(())
        })
        .await
    }

    async fn submit_job(&self, job: NewJob) -> Result<Job> {
        let id = job.id;
        self.write(move |connection| tasks::insert_job(connection, job, now_millis()))
            .await?;
        self.get_job(id).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.read(move |connection| read::job_by_uuid(connection, id, now_millis()))
            .await
    }

    async fn query_jobs(&self, filter: JobFilter, page: Page) -> Result<Vec<Job>> {
        self.read(move |connection| read::query_jobs(connection, &filter, page, now_millis()))
            .await
    }

    async fn list_tasks(
        &self,
        job: Uuid,
        parent: Option<Uuid>,
        page: Page,
    ) -> Result<Vec<TaskSummary>> {
        self.read(move |connection| read::list_tasks(connection, job, parent, page))
            .await
    }

    async fn get_tasks(&self, job: Uuid, ids: Vec<Uuid>) -> Result<Vec<TaskSummary>> {
        self.read(move |connection| read::get_tasks(connection, job, &ids))
            .await
    }

    async fn retry_job(&self, id: Uuid) -> Result<i64> {
        self.write(move |connection| tasks::retry_job(connection, id))
            .await
    }

    async fn cancel_job(&self, id: Uuid) -> Result<()> {
        self.write(move |connection| tasks::cancel_job(connection, id))
            .await
    }

    async fn job_state_counts(&self) -> Result<Vec<(JobState, u64)>> {
        self.read(read::job_state_counts).await
    }

    async fn report_and_claim(
        &self,
        report: Option<ComputedReport>,
        claim: Option<ClaimRequest>,
    ) -> Result<(Option<ReportOutcome>, Option<ClaimedTask>)> {
        let durability = if report.is_some() {
            Durability::Synced
        } else {
            Durability::Relaxed
        };
        let (outcome, claimed) = self
            .write_with(durability, move |connection| {
                let now = now_millis();
                let outcome = match report {
                    Some(report) => Some(tasks::complete_task(connection, report, now)?),
                    None => None,
                };
                let claimed = match claim {
                    Some(claim) => tasks::claim_task(connection, &claim, now)?,
                    None => None,
                };
                Ok((outcome, claimed))
            })
            .await?;
        Ok((outcome, claimed))
    }

    async fn report_and_claim_batch(
        &self,
        reports: Vec<Report>,
        claims: Vec<(ClaimRequest, usize)>,
    ) -> Result<(Vec<Result<ReportOutcome>>, Vec<ClaimedTask>)> {
        let durability = if reports.is_empty() {
            Durability::Relaxed
        } else {
            Durability::Synced
        };
        self.write_with(durability, move |connection| {
            let now = now_millis();
            let outcomes = reports
                .into_iter()
                .map(|report| {
                    in_item_savepoint(connection, |connection| match report {
                        Report::Computed(report) => tasks::complete_task(connection, report, now),
                        Report::Failed(report) => tasks::fail_task(connection, report, now),
                        Report::HandedBack(report) => tasks::hand_back(connection, report, now),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut claimed = Vec::new();
            for (claim, count) in claims {
                for _ in 0..count {
                    match tasks::claim_task(connection, &claim, now)? {
                        Some(task) => claimed.push(task),
                        None => break,
                    }
                }
            }
            Ok((outcomes, claimed))
        })
        .await
    }

    async fn fail_task(&self, report: FailedReport) -> Result<ReportOutcome> {
        self.write(move |connection| tasks::fail_task(connection, report, now_millis()))
            .await
    }

    async fn extend_lease(
        &self,
        task: Uuid,
        claimant: String,
        lease: Duration,
    ) -> Result<Option<Duration>> {
        self.write_relaxed(move |connection| {
            tasks::extend_lease(connection, task, &claimant, lease, now_millis())
        })
        .await
    }

    async fn extend_leases(
        &self,
        leases: Vec<(Uuid, Duration)>,
        claimant: String,
    ) -> Result<Vec<Option<Duration>>> {
        self.write_relaxed(move |connection| {
            let now = now_millis();
            leases
                .into_iter()
                .map(|(task, lease)| {
                    // A task that no longer exists (its job was retried away) is simply not
                    // extended; it must not fail the other extensions.
                    match tasks::extend_lease(connection, task, &claimant, lease, now) {
                        Err(Error::TaskNotFound { .. }) => Ok(None),
                        other => other,
                    }
                })
                .collect()
        })
        .await
    }

    async fn expire_leases(&self, now_millis: i64) -> Result<usize> {
        self.write(move |connection| tasks::expire_leases(connection, now_millis))
            .await
    }

    async fn next_lease_deadline(&self) -> Result<Option<i64>> {
        self.read(|connection| {
            connection
                .query_row(
                    "SELECT MIN(lease_expires_at) FROM tasks WHERE state = 2",
                    [],
                    |row| row.get(0),
                )
                .map_err(db("next lease deadline"))
        })
        .await
    }
    async fn create_workflow(&self, workflow: Workflow) -> Result<Workflow> {
        self.write(move |connection| releases::create_workflow(connection, workflow, now_millis()))
            .await
    }

    async fn get_workflow(&self, slug: &str) -> Result<Workflow> {
        let slug = slug.to_string();
        self.read(move |connection| releases::get_workflow(connection, &slug))
            .await
    }

    async fn list_workflows(&self) -> Result<Vec<Workflow>> {
        self.read(releases::list_workflows).await
    }

    async fn update_workflow(
        &self,
        slug: &str,
        name: Option<String>,
        summary: Option<String>,
        description: Option<String>,
    ) -> Result<Workflow> {
        let slug = slug.to_string();
        self.write(move |connection| {
            releases::update_workflow(connection, &slug, name, summary, description)
        })
        .await
    }

    async fn delete_workflow(&self, slug: &str) -> Result<()> {
        let slug = slug.to_string();
        self.write(move |connection| releases::delete_workflow(connection, &slug))
            .await
    }

    async fn register_artifact(&self, digest: String, size: u64) -> Result<Artifact> {
        self.write(move |connection| {
            releases::register_artifact(connection, digest, size, now_millis())
        })
        .await
    }

    async fn get_artifact(&self, digest: Option<String>, id: Option<Uuid>) -> Result<Artifact> {
        self.read(move |connection| releases::get_artifact(connection, digest.as_deref(), id))
            .await
    }

    async fn publish_release(
        &self,
        workflow: &str,
        artifact: Uuid,
        fingerprint: String,
        content: Vec<u8>,
    ) -> Result<Release> {
        let workflow = workflow.to_string();
        self.write(move |connection| {
            releases::publish_release(
                connection,
                &workflow,
                artifact,
                fingerprint,
                content,
                now_millis(),
            )
        })
        .await
    }

    async fn list_releases(&self, workflow: &str) -> Result<Vec<Release>> {
        let workflow = workflow.to_string();
        self.read(move |connection| releases::list_releases(connection, &workflow))
            .await
    }

    async fn get_release(&self, workflow: &str, id: Uuid) -> Result<Release> {
        let workflow = workflow.to_string();
        self.read(move |connection| Ok(releases::get_release(connection, &workflow, id)?.1))
            .await
    }

    async fn unpublish_release(&self, workflow: &str, id: Uuid) -> Result<()> {
        let workflow = workflow.to_string();
        self.write(move |connection| releases::unpublish_release(connection, &workflow, id))
            .await
    }

    async fn deploy_release(
        &self,
        workflow: &str,
        id: Uuid,
        clusters: Vec<String>,
    ) -> Result<Release> {
        let workflow = workflow.to_string();
        self.write(move |connection| {
            releases::deploy_release(connection, &workflow, id, &clusters, now_millis())
        })
        .await
    }

    async fn undeploy_release(
        &self,
        workflow: &str,
        id: Uuid,
        clusters: Vec<String>,
    ) -> Result<Release> {
        let workflow = workflow.to_string();
        self.write(move |connection| {
            releases::undeploy_release(connection, &workflow, id, &clusters)
        })
        .await
    }

    async fn cluster_deployments(&self, cluster: &str) -> Result<Vec<Release>> {
        let cluster = cluster.to_string();
        self.read(move |connection| releases::cluster_deployments(connection, &cluster))
            .await
    }

    // ---- console sessions (schema version 4) ----
    async fn create_console_session(&self, session: ConsoleSession) -> Result<()> {
        self.write(move |connection| sessions::create(connection, &session))
            .await
    }

    async fn get_console_session(
        &self,
        session_hash: [u8; 32],
        now_millis: i64,
    ) -> Result<Option<ConsoleSession>> {
        self.read(move |connection| sessions::get(connection, session_hash, now_millis))
            .await
    }

    async fn delete_console_session(&self, session_hash: [u8; 32]) -> Result<bool> {
        self.write(move |connection| sessions::delete(connection, session_hash))
            .await
    }

    async fn delete_expired_console_sessions(&self, now_millis: i64) -> Result<usize> {
        self.write(move |connection| sessions::delete_expired(connection, now_millis))
            .await
    }
    // ---- end of console sessions ----

    async fn insert_telemetry(
        &self,
        kind: TelemetryKind,
        records: Vec<TelemetryRecord>,
    ) -> Result<()> {
        self.telemetry_insert(kind, records).await
    }

    async fn query_telemetry(
        &self,
        kind: TelemetryKind,
        trace_id: Vec<u8>,
        task_id: Option<String>,
        severities: Vec<(i32, i32)>,
        page: Page,
    ) -> Result<Vec<(Uuid, Vec<u8>)>> {
        self.read(move |connection| {
            read::query_telemetry(
                connection,
                kind,
                &trace_id,
                task_id.as_deref(),
                &severities,
                page,
            )
        })
        .await
    }

    async fn count_telemetry_by_severity(
        &self,
        kind: TelemetryKind,
        trace_id: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(i32, u64)>> {
        self.read(move |connection| {
            read::count_telemetry_by_severity(connection, kind, &trace_id, limit)
        })
        .await
    }

    async fn delete_telemetry_before(&self, received_before_millis: i64) -> Result<usize> {
        self.write(move |connection| {
            connection
                .execute(
                    "DELETE FROM telemetry WHERE received_at < ?1",
                    [received_before_millis],
                )
                .map_err(db("delete telemetry"))
        })
        .await
    }

    async fn record_runners(&self, runners: Vec<RunnerSeen>) -> Result<()> {
        if runners.is_empty() {
            return Ok(());
        }
        self.write_relaxed(move |connection| runners::record_runners(connection, &runners))
            .await
    }

    async fn list_runners(
        &self,
        cluster: Option<String>,
        seen_since: i64,
    ) -> Result<Vec<RunnerSeen>> {
        self.read(move |connection| {
            runners::list_runners(connection, cluster.as_deref(), seen_since)
        })
        .await
    }

    async fn delete_runners_before(&self, seen_before: i64) -> Result<usize> {
        self.write_relaxed(move |connection| {
            runners::delete_runners_before(connection, seen_before)
        })
        .await
    }
}

impl SqliteStore {
    /// The telemetry part of the `Store` implementation (kept apart for readability).
    async fn telemetry_insert(
        &self,
        kind: TelemetryKind,
        records: Vec<TelemetryRecord>,
    ) -> Result<()> {
        self.write(move |connection| {
            let now = now_millis();
            let mut insert = connection
                .prepare_cached(
                    "INSERT OR IGNORE INTO telemetry (uuid, kind, trace_id, task_id, severity, time_unix_nano, received_at, encoded)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db("insert telemetry"))?;
            for record in records {
                insert
                    .execute(params![
                        record.id.as_bytes(),
                        kind as i32,
                        record.trace_id,
                        record.task_id,
                        record.severity,
                        record.time_unix_nano,
                        now,
                        record.encoded
                    ])
                    .map_err(db("insert telemetry"))?;
            }
            Ok(())
        })
        .await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conformance suite, one test per rule, each on a fresh store in its own temp dir.
    mod conformance {
        use super::*;

        crate::server::store::conformance::conformance_tests!(async {
            let directory = tempfile::tempdir().expect("temp dir");
            let store = SqliteStore::open(directory.path()).expect("open store");
            (store, directory)
        });
    }

    /// Two stores on one database file, as two servers on one data directory would be.
    mod replicas {
        use super::*;

        crate::server::store::conformance::replica_rules!(async {
            let directory = tempfile::tempdir().expect("temp dir");
            let first = SqliteStore::open(directory.path()).expect("open store");
            let second = SqliteStore::open(directory.path()).expect("open store again");
            (first, second, directory)
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_write_queue_makes_callers_wait_and_loses_nothing() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(directory.path()).expect("open");
        // Hold the writer inside one operation until released.
        let (entered, writer_busy) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |_| {
                        entered.send(()).expect("the test waits");
                        released.recv().expect("the test releases");
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || writer_busy.recv())
            .await
            .expect("join")
            .expect("the writer runs the blocker");

        let callers: Vec<_> = (0..2 * WRITE_QUEUE)
            .map(|index| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .create_cluster(Cluster {
                            slug: format!("queued-{index}"),
                            name: format!("Queued {index}"),
                            description: String::new(),
                            deletable: true,
                        })
                        .await
                })
            })
            .collect();
        let queue = store
            .inner
            .writer
            .lock()
            .expect("lock")
            .clone()
            .expect("open");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while queue.capacity() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never filled"
            );
            tokio::task::yield_now().await;
        }
        // The queue holds exactly its bound; every other caller waits to enqueue.
        assert_eq!(queue.max_capacity(), WRITE_QUEUE);
        assert!(callers.iter().all(|caller| !caller.is_finished()));
        drop(queue);

        release.send(()).expect("the blocker waits");
        blocker.await.expect("join").expect("the blocker");
        for caller in callers {
            caller.await.expect("join").expect("a queued write");
        }
        assert_eq!(
            store.list_clusters().await.expect("list").len(),
            2 * WRITE_QUEUE + 1,
            "every waiting caller's write is stored, besides the default cluster"
        );
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_reopening() {
        let directory = tempfile::tempdir().expect("temp dir");
        {
            let store = SqliteStore::open(directory.path()).expect("open");
            store
                .create_cluster(Cluster {
                    slug: "kept".into(),
                    name: "Kept".into(),
                    description: String::new(),
                    deletable: true,
                })
                .await
                .expect("create");
        }
        let store = SqliteStore::open(directory.path()).expect("reopen");
        assert_eq!(store.get_cluster("kept").await.expect("get").name, "Kept");
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_and_left_as_it_was() {
        let directory = tempfile::tempdir().expect("temp dir");
        drop(SqliteStore::open(directory.path()).expect("open"));
        let path = directory.path().join(DATABASE_FILE);
        let newer = counters::SCHEMA_VERSION + 1;
        Connection::open(&path)
            .expect("open the file")
            .pragma_update(None, "user_version", newer)
            .expect("mark the schema newer");

        let refused = SqliteStore::open(directory.path()).err().expect("refused");
        let message = refused.to_string();
        assert!(
            matches!(refused, Error::SchemaTooNew { found, supported, .. }
                if found == newer && supported == counters::SCHEMA_VERSION),
            "{refused:?}"
        );
        assert!(
            message.contains(&path.display().to_string()) && message.contains("upgrade tilebox"),
            "the message names the file and what to do: {message}"
        );
        let version: i64 = Connection::open(&path)
            .expect("open the file")
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, newer, "the refused database was not touched");
    }
}

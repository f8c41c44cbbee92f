//! The PostgreSQL backend: the store of several `tilebox server` replicas on one database.
//!
//! Its shape is SQLite's (`../sqlite`), so the two read alike: every write runs on the
//! writer thread, which drains up to [`MAX_BATCH`] queued operations into one transaction
//! and answers them after the one COMMIT (group commit: one WAL flush and one hold of a
//! hot job row per batch, not per call); reads run on a pool of connections, each in a
//! read-only REPEATABLE READ transaction, so a read of several statements sees one
//! snapshot. Across replicas, PostgreSQL's row locks order the writers: every rule that
//! touches a task locks its row first (`FOR UPDATE`), and claims skip rows another
//! transaction holds (`FOR UPDATE SKIP LOCKED`).
//!
//! Each operation of a batch runs in its own savepoint, so one that fails is rolled back
//! alone; one that hits a deadlock or a serialization failure is run again (up to
//! [`MAX_ATTEMPTS`] times) after its savepoint is rolled back. A batch holds at most
//! [`MAX_BATCH`] operations: more than 64 subtransactions that write overflow the per-backend
//! cache PostgreSQL keeps of them, which slows every snapshot of the whole server.
//!
//! A lost connection answers [`Error::Unavailable`] (clients retry it) and the writer
//! connects again, backing off; an operation is never run twice by the store itself after
//! its COMMIT was sent, since whether it committed is then unknown. Submissions are made
//! idempotent by job id, and reports are fenced by claimant, so a client's retry is safe.
//!
//! Layout:
//! - `mod.rs`: connections, the writer, the readers, the trait
//! - `migrations.rs` and `migrations/*.sql`: the versioned schema, applied at start
//! - `tasks.rs`: submit, claim, report, fail, leases, retry, cancel
//! - `counters.rs`: per-job counters
//! - `read.rs`: queries
//! - `releases.rs`: clusters' deployments, workflows, artifacts, releases, telemetry
//! - `blobs.rs`: artifact bytes, chunked, verified before they are readable

pub mod blobs;
mod counters;
mod migrations;
mod read;
mod releases;
mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::{
    Artifact, ClaimRequest, ClaimedTask, Cluster, ComputedReport, Error, FailedReport, Job,
    JobFilter, NewJob, Page, Release, Report, ReportOutcome, Result, Store, TaskSummary,
    TelemetryKind, TelemetryRecord, Workflow,
};
use crate::api::convert::now_millis;
use crate::api::workflows_v1::JobState;

pub use migrations::SCHEMA_VERSION;

/// At most this many operations share one transaction (each runs in a savepoint; see the
/// module's notes on the subtransaction cache).
const MAX_BATCH: usize = 48;
/// At most this many operations wait for the writer; more callers wait to enqueue.
const WRITE_QUEUE: usize = 1024;
/// How often an operation that lost a deadlock or a serialization conflict is run.
const MAX_ATTEMPTS: usize = 5;
/// Cached prepared statements per connection; the cache is cleared when full.
const MAX_STATEMENTS: usize = 256;
/// How long an ascending telemetry read waits for transactions holding its newest records
/// back (see `releases::query_telemetry`) before it answers without them.
const TELEMETRY_SETTLE: Duration = Duration::from_secs(2);

/// How the store connects.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections for reads, at most.
    pub readers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { readers: 16 }
    }
}

/// Maps a PostgreSQL error to a store error naming the operation.
pub(super) fn pg(operation: &'static str) -> impl Fn(postgres::Error) -> Error + Copy {
    move |source| classify(operation, source)
}

fn classify(operation: &'static str, source: postgres::Error) -> Error {
    let code = source.code().cloned();
    if code.as_ref() == Some(&SqlState::DISK_FULL) {
        return Error::StorageFull {
            operation,
            code: "53100 disk_full",
            source: Box::new(source),
        };
    }
    if is_unavailable(&source) {
        return Error::Unavailable {
            operation,
            source: Box::new(source),
        };
    }
    Error::Database {
        operation,
        source: Box::new(source),
    }
}

/// A lost connection, or a server shutting down or starting.
fn is_unavailable(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // Class 08: connection exceptions.
        Some(code) if code.code().starts_with("08") => true,
        Some(code) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code),
        // No SQLSTATE: an I/O error on the socket, or the server ended the session.
        None => true,
    }
}

/// A deadlock or a serialization failure: the operation may simply run again.
fn is_conflict(error: &Error) -> bool {
    let Error::Database { source, .. } = error else {
        return false;
    };
    source
        .downcast_ref::<postgres::Error>()
        .and_then(postgres::Error::code)
        .is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        })
}

/// One connection and the statements prepared on it.
pub(super) struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// A transaction on a [`Connection`]: runs statements prepared once per connection (the
/// writer runs the same few statements for every task).
pub(super) struct Tx<'c> {
    transaction: postgres::Transaction<'c>,
    statements: &'c mut HashMap<String, Statement>,
}

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Tx<'_> {
    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.transaction.prepare(sql)?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.transaction.query(&statement, params)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> std::result::Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.transaction.query_opt(&statement, params)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> std::result::Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.transaction.query_one(&statement, params)
    }

    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> std::result::Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.transaction.execute(&statement, params)
    }

    /// Runs statements without parameters, unprepared (DDL, savepoints).
    pub(super) fn batch_execute(&mut self, sql: &str) -> std::result::Result<(), postgres::Error> {
        self.transaction.batch_execute(sql)
    }
}

/// Whether a write must be durable before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Flushed before it is answered: submissions, reports, everything a client is told
    /// is done.
    Synced,
    /// Committed with `synchronous_commit = off`: claims and lease extensions. A crash of
    /// the database server may lose the last of them; the task is then claimed again, as
    /// at-least-once delivery allows.
    Relaxed,
}

/// An operation for the writer: run in the batch's transaction (given the error instead
/// when the batch could not begin), it answers a finisher that gets the commit's outcome.
type Finish = Box<dyn FnOnce(Option<&Error>) + Send>;
type WriteOperation = (
    Box<dyn FnOnce(std::result::Result<&mut Tx<'_>, &Error>) -> Finish + Send>,
    Durability,
);

/// The PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: postgres::Config,
    /// `host:port/database`, never the password: what messages name.
    target: String,
    writer: Mutex<Option<mpsc::Sender<WriteOperation>>>,
    readers: Mutex<Vec<Connection>>,
    reader_permits: Semaphore,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`),
    /// brings its schema up to [`SCHEMA_VERSION`] (refusing a newer one), and starts the
    /// writer.
    pub async fn connect(url: &str, options: Options) -> Result<Self> {
        let (config, target) = parse_url(url)?;
        let readers = options.readers.max(1);
        tokio::task::spawn_blocking(move || {
            // At start, an unreachable database is the operator's to fix: say which.
            let mut connection = connect(&config, &target).map_err(|error| match error {
                Error::Unavailable { source, .. } => Error::Open {
                    target: target.clone(),
                    source,
                },
                other => other,
            })?;
            migrations::migrate(&mut connection.client, &target)?;
            let (sender, receiver) = mpsc::channel::<WriteOperation>(WRITE_QUEUE);
            let writer_config = config.clone();
            let writer_target = target.clone();
            std::thread::Builder::new()
                .name("postgres-writer".to_string())
                .spawn(move || run_writer(connection, writer_config, writer_target, receiver))
                .map_err(|source| Error::Open {
                    target: target.clone(),
                    source: Box::new(source),
                })?;
            Ok(Self {
                inner: Arc::new(Inner {
                    config,
                    target,
                    writer: Mutex::new(Some(sender)),
                    readers: Mutex::new(Vec::new()),
                    reader_permits: Semaphore::new(readers),
                }),
            })
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    /// How the store connects (for the connections that signal other replicas).
    pub fn config(&self) -> &postgres::Config {
        &self.inner.config
    }

    /// `host:port/database` of the store, for messages (never the password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Runs `operation` inside the writer's next transaction; answers after the commit.
    async fn write<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.write_with(Durability::Synced, operation).await
    }

    /// Like [`write`](Self::write), for a write that need not be flushed on its own (see
    /// [`Durability::Relaxed`]).
    async fn write_relaxed<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.write_with(Durability::Relaxed, operation).await
    }

    async fn write_with<T, F>(&self, durability: Durability, mut operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T>>();
        let job = Box::new(move |tx: std::result::Result<&mut Tx<'_>, &Error>| {
            let result = match tx {
                Ok(tx) => in_savepoint(tx, &mut operation),
                Err(error) => Err(batch_failed(error)),
            };
            let finish: Finish = Box::new(move |batch_error: Option<&Error>| {
                let result = match batch_error {
                    None => result,
                    Some(error) => Err(batch_failed(error)),
                };
                let _ = answer.send(result);
            });
            finish
        });
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

    /// Runs `operation` in a read-only snapshot on a pooled connection. A pooled
    /// connection found closed (the database restarted) is replaced once.
    async fn read<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut operation = operation;
            for attempt in 0..2 {
                let pooled = inner.readers.lock().map_err(|_| Error::Closed)?.pop();
                let fresh = pooled.is_none();
                let mut connection = match pooled {
                    Some(connection) => connection,
                    None => connect(&inner.config, &inner.target)?,
                };
                let result = read_in(&mut connection, &mut operation);
                let lost = connection.client.is_closed();
                if !lost && let Ok(mut readers) = inner.readers.lock() {
                    readers.push(connection);
                }
                match result {
                    Err(Error::Unavailable { .. }) if lost && !fresh && attempt == 0 => continue,
                    other => return other,
                }
            }
            unreachable!("the second attempt returns")
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}

fn read_in<T>(
    connection: &mut Connection,
    operation: &mut impl FnMut(&mut Tx<'_>) -> Result<T>,
) -> Result<T> {
    let transaction = connection
        .client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg("begin a read"))?;
    let mut tx = Tx {
        transaction,
        statements: &mut connection.statements,
    };
    let result = operation(&mut tx);
    // Nothing was written: ending it either way is the same, and a failed read ends it.
    let ended = tx.transaction.commit().map_err(pg("end a read"));
    let value = result?;
    ended?;
    Ok(value)
}

/// Parses a `postgres://` URL (or a key=value string), refusing what this build cannot do.
fn parse_url(url: &str) -> Result<(postgres::Config, String)> {
    let config: postgres::Config = url.parse().map_err(|source| Error::Open {
        target: "the database URL (not shown: it may hold a password)".to_string(),
        source: Box::new(source),
    })?;
    let target = describe(&config);
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(Error::Open {
            target,
            source: "the URL asks for TLS (sslmode=require), which this build does not speak to PostgreSQL yet: connect over a trusted network or a local socket".into(),
        });
    }
    Ok((config, target))
}

/// `host:port/database` of a configuration.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

fn connect(config: &postgres::Config, target: &str) -> Result<Connection> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let mut client = config.connect(NoTls).map_err(|source| {
        if is_unavailable(&source) {
            Error::Unavailable {
                operation: "connect",
                source: Box::new(source),
            }
        } else {
            Error::Open {
                target: target.to_string(),
                source: Box::new(source),
            }
        }
    })?;
    // A transaction left open (a stuck client) would hold back vacuum for every table.
    client
        .batch_execute("SET idle_in_transaction_session_timeout = '60s'")
        .map_err(pg("configure the session"))?;
    Ok(Connection {
        client,
        statements: HashMap::new(),
    })
}

/// Runs one operation in its own savepoint, again after a deadlock or a serialization
/// failure (its savepoint rolled back, so its locks are released).
fn in_savepoint<T>(
    tx: &mut Tx<'_>,
    operation: &mut impl FnMut(&mut Tx<'_>) -> Result<T>,
) -> Result<T> {
    for attempt in 1.. {
        tx.batch_execute("SAVEPOINT operation")
            .map_err(pg("savepoint"))?;
        let result = operation(tx);
        let end = if result.is_ok() {
            "RELEASE SAVEPOINT operation"
        } else {
            "ROLLBACK TO SAVEPOINT operation; RELEASE SAVEPOINT operation"
        };
        tx.batch_execute(end).map_err(pg("savepoint"))?;
        match result {
            Err(error) if is_conflict(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(%error, attempt, "a write conflicted with another; running it again");
                std::thread::sleep(Duration::from_millis(
                    rand::random_range(1..10) * attempt as u64,
                ));
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// The error an operation is answered with when its batch failed as a whole.
fn batch_failed(error: &Error) -> Error {
    let source: super::BackendError = error.to_string().into();
    match error {
        Error::Unavailable { operation, .. } => Error::Unavailable { operation, source },
        Error::StorageFull {
            operation, code, ..
        } => Error::StorageFull {
            operation,
            code,
            source,
        },
        Error::Database { operation, .. } => Error::Database { operation, source },
        _ => Error::Database {
            operation: "commit",
            source,
        },
    }
}

fn run_writer(
    connection: Connection,
    config: postgres::Config,
    target: String,
    mut receiver: mpsc::Receiver<WriteOperation>,
) {
    let mut connection = Some(connection);
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(_) => break,
            }
        }
        let live = match connection.take() {
            Some(live) if !live.client.is_closed() => Ok(live),
            _ => connect(&config, &target),
        };
        let mut live = match live {
            Ok(live) => {
                backoff = Duration::from_millis(50);
                live
            }
            Err(error) => {
                tracing::warn!(%error, database = %target, "the writer cannot reach the database; answering its batch unavailable");
                for (operation, _) in batch {
                    operation(Err(&error))(None);
                }
                // Not a busy loop while the database is down; queued callers wait.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        run_batch(&mut live, batch);
        connection = Some(live);
    }
}

fn run_batch(connection: &mut Connection, batch: Vec<WriteOperation>) {
    // A batch is flushed at its commit when any of its writes must be.
    let relaxed = batch
        .iter()
        .all(|(_, durability)| *durability == Durability::Relaxed);
    let begun = connection.client.transaction().map_err(pg("begin a write"));
    let transaction = match begun {
        Ok(transaction) => transaction,
        Err(error) => {
            tracing::error!(%error, "cannot begin a write transaction");
            for (operation, _) in batch {
                operation(Err(&error))(None);
            }
            return;
        }
    };
    let mut tx = Tx {
        transaction,
        statements: &mut connection.statements,
    };
    let mut finishers: Vec<Finish> = Vec::with_capacity(batch.len());
    let mut lost: Option<Error> = None;
    if relaxed && let Err(error) = tx.batch_execute("SET LOCAL synchronous_commit = off") {
        lost = Some(classify("begin a write", error));
    }
    for (operation, _) in batch {
        if let Some(error) = &lost {
            finishers.push(operation(Err(error)));
            continue;
        }
        // A lost connection fails every statement after it, the commit included.
        finishers.push(operation(Ok(&mut tx)));
    }
    if let Some(error) = lost {
        tracing::error!(%error, "the write transaction was lost; failing its batch");
        drop(tx);
        finishers
            .into_iter()
            .for_each(|finish| finish(Some(&error)));
        return;
    }
    match tx.transaction.commit().map_err(pg("commit")) {
        Ok(()) => finishers.into_iter().for_each(|finish| finish(None)),
        Err(error) => {
            // Unavailable here means the outcome is unknown: the callers are told so.
            tracing::error!(%error, "commit failed; failing the batch");
            finishers
                .into_iter()
                .for_each(|finish| finish(Some(&error)));
        }
    }
}

fn row_to_cluster(row: &Row) -> Cluster {
    Cluster {
        slug: row.get(0),
        name: row.get(1),
        description: row.get(2),
        deletable: row.get(3),
    }
}

/// Tells every replica's deployment watches to read again, in the transaction that changed
/// the deployments: delivered at its commit, never without it (see `server/signals.rs`).
fn notify_deployments(tx: &mut Tx<'_>) -> Result<()> {
    tx.execute(
        "SELECT pg_notify($1, '')",
        &[&crate::server::signals::DEPLOYMENTS_CHANNEL],
    )
    .map(|_| ())
    .map_err(pg("notify deployment watches"))
}

pub(super) fn get_cluster(tx: &mut Tx<'_>, slug: &str) -> Result<Cluster> {
    tx.query_opt(
        "SELECT slug, name, description, deletable FROM clusters WHERE slug = $1",
        &[&slug],
    )
    .map_err(pg("get cluster"))?
    .map(|row| row_to_cluster(&row))
    .ok_or_else(|| Error::ClusterNotFound {
        slug: slug.to_string(),
    })
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        // Closing a blocking client blocks on its own runtime, which a runtime's thread
        // (where the last clone of the store may be dropped) must not do.
        if let Ok(mut readers) = self.readers.lock() {
            let readers = std::mem::take(&mut *readers);
            if !readers.is_empty() {
                let _ = std::thread::Builder::new()
                    .name("postgres-close".to_string())
                    .spawn(move || drop(readers));
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_cluster(&self, cluster: Cluster) -> Result<Cluster> {
        self.write(move |tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO clusters (slug, name, description, deletable, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (slug) DO NOTHING",
                    &[
                        &cluster.slug,
                        &cluster.name,
                        &cluster.description,
                        &cluster.deletable,
                        &now_millis(),
                    ],
                )
                .map_err(pg("create cluster"))?;
            if inserted == 0 {
                return Err(Error::ClusterExists {
                    slug: cluster.slug.clone(),
                });
            }
            Ok(cluster.clone())
        })
        .await
    }

    async fn task_clusters(&self, tasks: Vec<Uuid>) -> Result<Vec<Option<String>>> {
        self.read(move |tx| {
            let rows = tx
                .query(
                    "SELECT uuid, cluster FROM tasks WHERE uuid = ANY($1)",
                    &[&tasks],
                )
                .map_err(pg("read task clusters"))?;
            let found: HashMap<Uuid, String> =
                rows.iter().map(|row| (row.get(0), row.get(1))).collect();
            Ok(tasks.iter().map(|task| found.get(task).cloned()).collect())
        })
        .await
    }

    async fn get_cluster(&self, slug: &str) -> Result<Cluster> {
        let slug = slug.to_string();
        self.read(move |tx| get_cluster(tx, &slug)).await
    }

    async fn list_clusters(&self) -> Result<Vec<Cluster>> {
        self.read(|tx| {
            let rows = tx
                .query(
                    "SELECT slug, name, description, deletable FROM clusters ORDER BY created_at, slug",
                    &[],
                )
                .map_err(pg("list clusters"))?;
            Ok(rows.iter().map(row_to_cluster).collect())
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
        self.write(move |tx| {
            let mut cluster = get_cluster(tx, &slug)?;
            if let Some(name) = &name {
                cluster.name = name.clone();
            }
            if let Some(description) = &description {
                cluster.description = description.clone();
            }
            tx.execute(
                "UPDATE clusters SET name = $2, description = $3 WHERE slug = $1",
                &[&slug, &cluster.name, &cluster.description],
            )
            .map_err(pg("update cluster"))?;
            Ok(cluster)
        })
        .await
    }

    async fn delete_cluster(&self, slug: &str) -> Result<()> {
        let slug = slug.to_string();
        self.write(move |tx| {
            // Locked, so a submission to it waits for the outcome (its key share conflicts).
            let cluster = tx
                .query_opt(
                    "SELECT slug, name, description, deletable FROM clusters WHERE slug = $1 FOR UPDATE",
                    &[&slug],
                )
                .map_err(pg("delete cluster"))?
                .map(|row| row_to_cluster(&row))
                .ok_or_else(|| Error::ClusterNotFound { slug: slug.clone() })?;
            if !cluster.deletable {
                return Err(Error::ClusterNotDeletable {
                    slug: slug.clone(),
                    reason: "it is the default cluster",
                });
            }
            let waiting = tx
                .query_opt(
                    "SELECT 1 FROM tasks WHERE cluster = $1 AND state IN (1, 2) AND job_active LIMIT 1",
                    &[&slug],
                )
                .map_err(pg("delete cluster"))?;
            if waiting.is_some() {
                return Err(Error::ClusterNotDeletable {
                    slug: slug.clone(),
                    reason: "tasks are queued or running on it",
                });
            }
            tx.execute("DELETE FROM clusters WHERE slug = $1", &[&slug])
                .map_err(pg("delete cluster"))?;
            // Its deployments go with it (they would otherwise pin their releases forever).
            tx.execute("DELETE FROM deployments WHERE cluster = $1", &[&slug])
                .map_err(pg("delete cluster"))?;
            Ok(())
        })
        .await
    }

    async fn submit_job(&self, job: NewJob) -> Result<Job> {
        let id = job.id;
        self.write(move |tx| tasks::insert_job(tx, &job, now_millis()))
            .await?;
        self.get_job(id).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.read(move |tx| read::job_by_uuid(tx, id, now_millis()))
            .await
    }

    async fn query_jobs(&self, filter: JobFilter, page: Page) -> Result<Vec<Job>> {
        self.read(move |tx| read::query_jobs(tx, &filter, page, now_millis()))
            .await
    }

    async fn list_tasks(
        &self,
        job: Uuid,
        parent: Option<Uuid>,
        page: Page,
    ) -> Result<Vec<TaskSummary>> {
        self.read(move |tx| read::list_tasks(tx, job, parent, page))
            .await
    }

    async fn retry_job(&self, id: Uuid) -> Result<i64> {
        self.write(move |tx| tasks::retry_job(tx, id)).await
    }

    async fn cancel_job(&self, id: Uuid) -> Result<()> {
        self.write(move |tx| tasks::cancel_job(tx, id)).await
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
        self.write_with(durability, move |tx| {
            let now = now_millis();
            let outcome = match &report {
                Some(report) => Some(tasks::complete_task(tx, report, now)?),
                None => None,
            };
            let claimed = match &claim {
                Some(claim) => tasks::claim_tasks(tx, claim, 1, now)?.pop(),
                None => None,
            };
            Ok((outcome, claimed))
        })
        .await
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
        self.write_with(durability, move |tx| {
            let now = now_millis();
            let outcomes = reports
                .iter()
                .map(|report| tasks::apply_report(tx, report, now))
                .collect::<Result<Vec<_>>>()?;
            let mut claimed = Vec::new();
            for (claim, count) in &claims {
                claimed.extend(tasks::claim_tasks(tx, claim, *count, now)?);
            }
            Ok((outcomes, claimed))
        })
        .await
    }

    async fn fail_task(&self, report: FailedReport) -> Result<ReportOutcome> {
        self.write(move |tx| tasks::fail_task(tx, &report, now_millis()))
            .await
    }

    async fn extend_lease(
        &self,
        task: Uuid,
        claimant: String,
        lease: Duration,
    ) -> Result<Option<Duration>> {
        self.write_relaxed(move |tx| {
            Ok(
                tasks::extend_leases(tx, &[(task, lease)], &claimant, now_millis())?
                    .pop()
                    .flatten(),
            )
        })
        .await
    }

    async fn extend_leases(
        &self,
        leases: Vec<(Uuid, Duration)>,
        claimant: String,
    ) -> Result<Vec<Option<Duration>>> {
        self.write_relaxed(move |tx| tasks::extend_leases(tx, &leases, &claimant, now_millis()))
            .await
    }

    async fn expire_leases(&self, now_millis: i64) -> Result<usize> {
        self.write(move |tx| tasks::expire_leases(tx, now_millis))
            .await
    }

    async fn next_lease_deadline(&self) -> Result<Option<i64>> {
        self.read(|tx| {
            tx.query_one(
                "SELECT MIN(lease_expires_at) FROM tasks WHERE state = 2",
                &[],
            )
            .map(|row| row.get(0))
            .map_err(pg("next lease deadline"))
        })
        .await
    }

    async fn create_workflow(&self, workflow: Workflow) -> Result<Workflow> {
        self.write(move |tx| releases::create_workflow(tx, &workflow, now_millis()))
            .await
    }

    async fn get_workflow(&self, slug: &str) -> Result<Workflow> {
        let slug = slug.to_string();
        self.read(move |tx| releases::get_workflow(tx, &slug)).await
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
        self.write(move |tx| releases::update_workflow(tx, &slug, &name, &summary, &description))
            .await
    }

    async fn delete_workflow(&self, slug: &str) -> Result<()> {
        let slug = slug.to_string();
        self.write(move |tx| releases::delete_workflow(tx, &slug))
            .await
    }

    async fn register_artifact(&self, digest: String, size: u64) -> Result<Artifact> {
        self.write(move |tx| releases::register_artifact(tx, &digest, size, now_millis()))
            .await
    }

    async fn get_artifact(&self, digest: Option<String>, id: Option<Uuid>) -> Result<Artifact> {
        self.read(move |tx| releases::get_artifact(tx, digest.as_deref(), id))
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
        self.write(move |tx| {
            releases::publish_release(
                tx,
                &workflow,
                artifact,
                &fingerprint,
                &content,
                now_millis(),
            )
        })
        .await
    }

    async fn list_releases(&self, workflow: &str) -> Result<Vec<Release>> {
        let workflow = workflow.to_string();
        self.read(move |tx| releases::list_releases(tx, &workflow))
            .await
    }

    async fn get_release(&self, workflow: &str, id: Uuid) -> Result<Release> {
        let workflow = workflow.to_string();
        self.read(move |tx| releases::get_release(tx, &workflow, id))
            .await
    }

    async fn unpublish_release(&self, workflow: &str, id: Uuid) -> Result<()> {
        let workflow = workflow.to_string();
        self.write(move |tx| releases::unpublish_release(tx, &workflow, id))
            .await
    }

    async fn deploy_release(
        &self,
        workflow: &str,
        id: Uuid,
        clusters: Vec<String>,
    ) -> Result<Release> {
        let workflow = workflow.to_string();
        self.write(move |tx| {
            let release = releases::deploy_release(tx, &workflow, id, &clusters, now_millis())?;
            notify_deployments(tx)?;
            Ok(release)
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
        self.write(move |tx| {
            let release = releases::undeploy_release(tx, &workflow, id, &clusters)?;
            notify_deployments(tx)?;
            Ok(release)
        })
        .await
    }

    async fn cluster_deployments(&self, cluster: &str) -> Result<Vec<Release>> {
        let cluster = cluster.to_string();
        self.read(move |tx| releases::cluster_deployments(tx, &cluster))
            .await
    }

    async fn insert_telemetry(
        &self,
        kind: TelemetryKind,
        records: Vec<TelemetryRecord>,
    ) -> Result<()> {
        self.write(move |tx| releases::insert_telemetry(tx, kind, &records, now_millis()))
            .await
    }

    async fn query_telemetry(
        &self,
        kind: TelemetryKind,
        trace_id: Vec<u8>,
        task_id: Option<String>,
        severities: Vec<(i32, i32)>,
        page: Page,
    ) -> Result<Vec<(Uuid, Vec<u8>)>> {
        let read = || {
            let (trace_id, task_id, severities) =
                (trace_id.clone(), task_id.clone(), severities.clone());
            self.read(move |tx| {
                releases::query_telemetry(
                    tx,
                    kind,
                    &trace_id,
                    task_id.as_deref(),
                    &severities,
                    page,
                )
            })
        };
        let (records, held_back) = read().await?;
        let Some(xid) = held_back else {
            return Ok(records);
        };
        // Records are held back by transactions still running (usually for milliseconds):
        // wait a little for them, so a reader sees what was reported just before it asked.
        // A follower that does not wait long enough gets them on its next page.
        let deadline = tokio::time::Instant::now() + TELEMETRY_SETTLE;
        loop {
            let xid = xid.clone();
            if self.read(move |tx| releases::settled(tx, &xid)).await? {
                return Ok(read().await?.0);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn delete_telemetry_before(&self, received_before_millis: i64) -> Result<usize> {
        // Short batches, each its own write: retention never holds a long transaction, and
        // replicas running it at once skip each other's rows.
        let mut deleted = 0;
        loop {
            let batch = self
                .write(move |tx| releases::delete_telemetry_batch(tx, received_before_millis))
                .await?;
            deleted += batch;
            if batch < releases::TELEMETRY_DELETE_BATCH as usize {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
#[path = "../../../../tests/support/postgres.rs"]
pub(crate) mod test_cluster;

#[cfg(test)]
mod tests {
    use super::*;
    use test_cluster::TestDatabase;

    /// Opens a store on a fresh database of the shared test cluster.
    pub(crate) async fn open() -> (PgStore, TestDatabase) {
        let database = tokio::task::spawn_blocking(TestDatabase::create)
            .await
            .expect("create a test database");
        let store = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect the store");
        (store, database)
    }

    /// The whole conformance suite, one test per rule, each on a fresh database.
    mod conformance {
        use super::*;
        crate::server::store::conformance::conformance_tests!(open());
    }

    /// Two stores on one database, as two replicas are.
    mod replicas {
        use super::*;
        crate::server::store::conformance::replica_rules!(async {
            let (first, database) = open().await;
            let second = PgStore::connect(&database.url, Options::default())
                .await
                .expect("connect a second store");
            (first, second, database)
        });
    }

    /// A client that lost the answer to its submission submits again: one job.
    #[tokio::test]
    async fn submitting_a_job_again_changes_nothing() {
        let (store, _database) = open().await;
        let task = |name: &str| crate::server::store::NewTask {
            id: Uuid::now_v7(),
            identifier: crate::server::store::Identifier {
                name: name.to_string(),
                version: "v1.0".to_string(),
                major: 1,
                minor: 0,
            },
            input: Vec::new(),
            display: name.to_string(),
            cluster: crate::server::store::DEFAULT_CLUSTER_SLUG.to_string(),
            max_retries: 0,
            optional: false,
            depends_on: Vec::new(),
        };
        let job = NewJob {
            id: Uuid::now_v7(),
            name: "once".to_string(),
            trace_parent: String::new(),
            tasks: vec![task("First")],
        };
        let first = store.submit_job(job.clone()).await.expect("submit");
        let again = NewJob {
            name: "twice".to_string(),
            tasks: vec![task("Second"), task("Third")],
            ..job
        };
        let second = store.submit_job(again).await.expect("submit again");
        assert_eq!((second.id, second.name.as_str()), (first.id, "once"));
        assert_eq!(second.stats.total_tasks, 1, "{second:?}");
        let all = store
            .query_jobs(
                JobFilter::default(),
                Page {
                    after: None,
                    limit: 10,
                    descending: false,
                },
            )
            .await
            .expect("query jobs");
        assert_eq!(all.len(), 1, "{all:?}");
    }

    #[tokio::test]
    async fn a_database_of_a_newer_schema_is_refused_and_left_as_it_was() {
        let (store, database) = open().await;
        drop(store);
        let newer = SCHEMA_VERSION + 1;
        let url = database.url.clone();
        tokio::task::spawn_blocking(move || {
            test_cluster::TestCluster::psql(
                &url,
                &format!("INSERT INTO schema_migrations (version, name, applied_at) VALUES ({newer}, 'from the future', 0)"),
            )
        })
        .await
        .expect("mark the schema newer");
        let refused = PgStore::connect(&database.url, Options::default())
            .await
            .err()
            .expect("refused");
        let message = refused.to_string();
        assert!(
            matches!(refused, Error::SchemaTooNew { found, supported, .. }
                if found == newer && supported == SCHEMA_VERSION),
            "{refused:?}"
        );
        assert!(
            message.contains(&format!(
                "127.0.0.1:{}/{}",
                database.cluster.port, database.name
            )) && message.contains("upgrade tilebox"),
            "the message names the database and what to do: {message}"
        );
    }

    #[tokio::test]
    async fn a_url_with_a_password_is_never_shown() {
        let refused = PgStore::connect(
            "postgres://someone:hunter2@127.0.0.1:1/nowhere?connect_timeout=2",
            Options::default(),
        )
        .await
        .err()
        .expect("nothing listens on port 1");
        let shown = format!("{refused} {refused:?}");
        assert!(
            !shown.contains("hunter2"),
            "the password is not shown: {shown}"
        );
        let refused = PgStore::connect(
            "postgres://someone:hunter2@127.0.0.1:1/x?sslmode=require",
            Options::default(),
        )
        .await
        .err()
        .expect("TLS is refused");
        let shown = format!("{refused} {:?}", std::error::Error::source(&refused));
        assert!(
            shown.contains("sslmode=require") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}

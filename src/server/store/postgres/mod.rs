//! The PostgreSQL backend: the store of several `tilebox server` replicas on one database.
//!
//! Its shape is SQLite's (`../sqlite`), so the two read alike: every write goes into one
//! queue, and each of a few writer threads (`Options::writers`, each with its own
//! connection) drains up to [`MAX_BATCH`] queued operations into one transaction and
//! answers them after the one COMMIT (group commit: one WAL flush and one hold of a hot job
//! row per batch, not per call; while one writer waits for its flush, another runs); reads run on a pool of connections, each in a
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
//! - `runners.rs`: runner presence (the `runners` table)
//! - `sessions.rs`: the web console's sessions

pub mod blobs;
mod counters;
mod migrations;
mod read;
mod releases;
mod runners;
mod sessions;
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
    Artifact, ClaimRequest, ClaimedTask, Cluster, ComputedReport, ConsoleSession, Error,
    FailedReport, Job, JobFilter, NewJob, Page, Release, Report, ReportOutcome, Result, RunnerSeen,
    Store, TaskSummary, TelemetryKind, TelemetryRecord, Workflow,
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
/// How often a submission is made again after the database was unavailable (about 3 s).
const SUBMIT_ATTEMPTS: u32 = 4;
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
    /// Writer threads, each with its own connection, taking batches from one queue: while
    /// one waits for its commit's flush, another runs the next batch.
    pub writers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            readers: 16,
            writers: 2,
        }
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
    if code.as_ref() == Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE)
        || code.as_ref() == Some(&SqlState::UNTRANSLATABLE_CHARACTER)
    {
        return Error::Unstorable {
            operation,
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
        // No SQLSTATE: unavailable only when the socket failed (I/O, a timeout, the server
        // ending the session); a row that is not there or a value that does not convert is
        // the same on every retry.
        None => {
            let text = error.to_string();
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
                || [
                    "error connecting",
                    "error communicating",
                    "connection closed",
                    "timeout",
                ]
                .iter()
                .any(|phrase| text.contains(phrase))
        }
    }
}

/// A deadlock or a serialization failure: the operation may simply run again.
pub(super) fn is_conflict(error: &Error) -> bool {
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

/// An operation for the writers. It runs in a batch's transaction, in a savepoint of its
/// own, and keeps its result until the batch's commit answers it; it may run again (in a
/// transaction of its own) when its batch is rolled back for a conflict.
trait WriteOperation: Send {
    fn durability(&self) -> Durability;
    /// Runs in `tx`; false when it lost a deadlock or a serialization conflict (nothing of
    /// it kept). In a savepoint of its own when it shares the transaction; alone in it, it
    /// needs none (two round trips fewer): the caller then rolls the transaction back
    /// unless [`succeeded`](Self::succeeded).
    fn run(&mut self, tx: &mut Tx<'_>, shared: bool) -> std::result::Result<bool, Error>;
    /// Whether its last run answered success.
    fn succeeded(&self) -> bool;
    /// Answers the caller: its own result, or `batch_error` when the transaction failed.
    fn finish(self: Box<Self>, batch_error: Option<&Error>);
}

struct Operation<T, F> {
    operation: F,
    durability: Durability,
    result: Option<Result<T>>,
    answer: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteOperation for Operation<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn run(&mut self, tx: &mut Tx<'_>, shared: bool) -> std::result::Result<bool, Error> {
        if shared {
            tx.batch_execute("SAVEPOINT operation")
                .map_err(pg("savepoint"))?;
        }
        let result = (self.operation)(tx);
        if shared {
            let end = if result.is_ok() {
                "RELEASE SAVEPOINT operation"
            } else {
                "ROLLBACK TO SAVEPOINT operation; RELEASE SAVEPOINT operation"
            };
            tx.batch_execute(end).map_err(pg("savepoint"))?;
        }
        if result.as_ref().is_err_and(is_conflict) {
            return Ok(false);
        }
        self.result = Some(result);
        Ok(true)
    }

    fn succeeded(&self) -> bool {
        matches!(self.result, Some(Ok(_)))
    }

    fn finish(self: Box<Self>, batch_error: Option<&Error>) {
        let result = match (batch_error, self.result) {
            (None, Some(result)) => result,
            (Some(error), _) => Err(batch_failed(error)),
            (None, None) => Err(Error::Database {
                operation: "write",
                source: "the operation did not run".into(),
            }),
        };
        let _ = self.answer.send(result);
    }
}

type Queued = Box<dyn WriteOperation>;

/// The PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: postgres::Config,
    /// `host:port/database`, never the password: what messages name.
    target: String,
    writer: Mutex<Option<mpsc::Sender<Queued>>>,
    readers: Mutex<Vec<Connection>>,
    reader_permits: Arc<Semaphore>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`),
    /// brings its schema up to [`SCHEMA_VERSION`] (refusing a newer one), and starts the
    /// writer.
    pub async fn connect(url: &str, options: Options) -> Result<Self> {
        let (config, target) = parse_url(url)?;
        let readers = options.readers.max(1);
        let writers = options.writers.max(1);
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
            let (sender, receiver) = mpsc::channel::<Queued>(WRITE_QUEUE);
            let queue = Arc::new(Mutex::new(receiver));
            let mut first = Some(connection);
            for index in 0..writers {
                // The first writer keeps the connection that migrated; the others connect
                // when their first batch comes.
                let connection = first.take();
                let (config, target, queue) = (config.clone(), target.clone(), queue.clone());
                std::thread::Builder::new()
                    .name(format!("postgres-writer-{index}"))
                    .spawn(move || run_writer(connection, config, target, queue))
                    .map_err(|source| Error::Open {
                        target: "a writer thread".to_string(),
                        source: Box::new(source),
                    })?;
            }
            Ok(Self {
                inner: Arc::new(Inner {
                    config,
                    target,
                    writer: Mutex::new(Some(sender)),
                    readers: Mutex::new(Vec::new()),
                    reader_permits: Arc::new(Semaphore::new(readers)),
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

    async fn write_with<T, F>(&self, durability: Durability, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T>>();
        let queued: Queued = Box::new(Operation {
            operation,
            durability,
            result: None,
            answer,
        });
        let sender = self
            .inner
            .writer
            .lock()
            .map_err(|_| Error::Closed)?
            .clone()
            .ok_or(Error::Closed)?;
        // Waits while the queue is full: backpressure on every writer.
        sender.send(queued).await.map_err(|_| Error::Closed)?;
        answered.await.map_err(|_| Error::Closed)?
    }

    /// Runs `operation` in a read-only snapshot on a pooled connection (see
    /// [`pooled`](Self::pooled)).
    pub(super) async fn read<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.pooled(Pooled::Read, operation).await
    }

    /// Runs an idempotent write in a short transaction of its own on a pooled connection:
    /// bulky writes (telemetry exports) that must not hold up the writers' batches of claims
    /// and reports, nor keep their locks while they are sent.
    pub(super) async fn write_apart<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.pooled(Pooled::Write, operation).await
    }

    /// Runs `operation` on a pooled connection. When a pooled connection turns out lost
    /// (the database restarted), so are the others pooled with it: the pool is emptied and
    /// the operation runs once more on a new connection.
    async fn pooled<T, F>(&self, mode: Pooled, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        // Owned and moved into the blocking task: a caller that goes away (a client's
        // deadline) must not free the permit while the task still holds its connection.
        let permit = self
            .inner
            .reader_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut operation = operation;
            for attempt in 0..2 {
                let pooled = inner.readers.lock().map_err(|_| Error::Closed)?.pop();
                let fresh = pooled.is_none();
                let mut connection = match pooled {
                    Some(connection) => connection,
                    None => connect(&inner.config, &inner.target)?,
                };
                let result = run_pooled(&mut connection, mode, &mut operation);
                let lost = connection.client.is_closed()
                    || matches!(result, Err(Error::Unavailable { .. }));
                if lost {
                    let stale = inner
                        .readers
                        .lock()
                        .map(|mut readers| std::mem::take(&mut *readers))
                        .unwrap_or_default();
                    drop(stale);
                } else if let Ok(mut readers) = inner.readers.lock() {
                    readers.push(connection);
                }
                match result {
                    Err(Error::Unavailable { .. }) if !fresh && attempt == 0 => continue,
                    other => return other,
                }
            }
            unreachable!("the second attempt returns")
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}

/// What a pooled connection runs: a read-only snapshot, or a short write of its own
/// (idempotent, so it may run again after a lost connection) outside the writers' batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooled {
    Read,
    Write,
}

fn run_pooled<T>(
    connection: &mut Connection,
    mode: Pooled,
    operation: &mut impl FnMut(&mut Tx<'_>) -> Result<T>,
) -> Result<T> {
    let transaction = match mode {
        Pooled::Read => connection
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start(),
        Pooled::Write => connection.client.transaction(),
    }
    .map_err(pg("begin"))?;
    let mut tx = Tx {
        transaction,
        statements: &mut connection.statements,
    };
    match operation(&mut tx) {
        Ok(value) => {
            tx.transaction.commit().map_err(pg("commit"))?;
            Ok(value)
        }
        // Dropping the transaction rolls it back.
        Err(error) => Err(error),
    }
}

/// Parses a `postgres://` URL (or a key=value string), refusing what this build cannot do.
fn parse_url(url: &str) -> Result<(postgres::Config, String)> {
    let config: postgres::Config = url.parse().map_err(|source| Error::Open {
        target: "the database URL (not shown: it may hold a password)".to_string(),
        source: Box::new(source),
    })?;
    let mut config = config;
    let target = describe(&config);
    tune(&mut config);
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(Error::Open {
            target,
            source: "the URL asks for TLS (sslmode=require), which this build does not speak to PostgreSQL yet: connect over a trusted network or a local socket".into(),
        });
    }
    Ok((config, target))
}

/// Bounds how long a connection may take to open, and how long a dead one (the database's
/// machine gone, a NAT or load balancer that dropped an idle flow) goes unnoticed: TCP
/// keepalives after 15 s idle, every 5 s, 3 probes; unacknowledged data fails after 30 s.
/// Without them the listening connection of `server/signals.rs`, which only reads, would
/// wait for a dead peer for hours, and a writer for the kernel's retransmission limit.
fn tune(config: &mut postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(15))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
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
    // A transaction left open (a stuck client) would hold back vacuum for every table; a
    // statement stuck on a lock or a hung server must end so the caller hears of it.
    client
        .batch_execute(
            "SET idle_in_transaction_session_timeout = '60s'; SET statement_timeout = '120s'",
        )
        .map_err(pg("configure the session"))?;
    Ok(Connection {
        client,
        statements: HashMap::new(),
    })
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

/// Takes the next batch from the queue: waits for one operation, then takes what else is
/// waiting, up to [`MAX_BATCH`]. `None` once the store is dropped.
fn next_batch(queue: &Mutex<mpsc::Receiver<Queued>>) -> Option<Vec<Queued>> {
    let mut receiver = queue.lock().ok()?;
    let first = receiver.blocking_recv()?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(operation) => batch.push(operation),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn run_writer(
    connection: Option<Connection>,
    config: postgres::Config,
    target: String,
    queue: Arc<Mutex<mpsc::Receiver<Queued>>>,
) {
    let mut connection = connection;
    let mut backoff = Duration::from_millis(50);
    while let Some(batch) = next_batch(&queue) {
        let mut pending = Some(batch);
        // A connection found dead at BEGIN (the database restarted while it sat idle) is
        // replaced once, and the batch, untouched, runs on the new one.
        for attempt in 0..2 {
            let Some(batch) = pending.take() else { break };
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
                    for operation in batch {
                        operation.finish(Some(&error));
                    }
                    // Not a busy loop while the database is down; queued callers wait.
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    break;
                }
            };
            match run_batch(&mut live, batch) {
                Ok(()) => connection = Some(live),
                Err((batch, error)) if attempt == 0 => {
                    tracing::info!(%error, database = %target, "the writer's connection was lost while idle; running its batch on a new one");
                    pending = Some(batch);
                }
                Err((batch, error)) => {
                    tracing::warn!(%error, database = %target, "the writer cannot reach the database; answering its batch unavailable");
                    for operation in batch {
                        operation.finish(Some(&error));
                    }
                }
            }
        }
    }
}

/// Runs a batch in one transaction. A batch whose BEGIN failed on a lost connection is
/// answered back untouched (nothing of it reached the database), for a fresh connection.
///
/// When an operation loses a deadlock or a serialization conflict, retrying it alone in
/// the batch would not help: the operations before it still hold their locks, which may be
/// what the other side waits for. The whole batch is rolled back instead, and its
/// operations run again one per transaction ([`run_alone`]).
fn run_batch(
    connection: &mut Connection,
    batch: Vec<Queued>,
) -> std::result::Result<(), (Vec<Queued>, Error)> {
    if let Some(conflicted) = run_together(connection, batch)? {
        tracing::debug!(
            operations = conflicted.len(),
            "a batch lost a conflict; running its operations one by one"
        );
        for operation in conflicted {
            run_alone(connection, operation);
        }
    }
    Ok(())
}

/// The batch in one transaction; answers it back, rolled back, when an operation lost a
/// conflict.
fn run_together(
    connection: &mut Connection,
    mut batch: Vec<Queued>,
) -> std::result::Result<Option<Vec<Queued>>, (Vec<Queued>, Error)> {
    // A batch is flushed at its commit when any of its writes must be.
    let relaxed = batch
        .iter()
        .all(|operation| operation.durability() == Durability::Relaxed);
    let begun = connection.client.transaction().map_err(pg("begin a write"));
    let transaction = match begun {
        Ok(transaction) => transaction,
        Err(error @ Error::Unavailable { .. }) => return Err((batch, error)),
        Err(error) => {
            tracing::error!(%error, "cannot begin a write transaction");
            batch
                .into_iter()
                .for_each(|operation| operation.finish(Some(&error)));
            return Ok(None);
        }
    };
    let mut tx = Tx {
        transaction,
        statements: &mut connection.statements,
    };
    let mut failed: Option<Error> = None;
    let mut conflicted = false;
    if relaxed && let Err(error) = tx.batch_execute("SET LOCAL synchronous_commit = off") {
        failed = Some(classify("begin a write", error));
    }
    let shared = batch.len() > 1;
    for operation in &mut batch {
        if failed.is_some() || conflicted {
            break;
        }
        // A lost connection fails every statement after it, the commit included.
        match operation.run(&mut tx, shared) {
            Ok(true) => {}
            Ok(false) => conflicted = true,
            Err(error) => failed = Some(error),
        }
    }
    if !shared && failed.is_none() && !conflicted && !batch[0].succeeded() {
        // Alone and failed: its statements may have aborted the transaction. Nothing of it
        // is kept; it answers its own error.
        drop(tx);
        batch
            .into_iter()
            .for_each(|operation| operation.finish(None));
        return Ok(None);
    }
    if let Some(error) = failed {
        tracing::error!(%error, "the write transaction was lost; failing its batch");
        drop(tx);
        batch
            .into_iter()
            .for_each(|operation| operation.finish(Some(&error)));
        return Ok(None);
    }
    if conflicted {
        // Dropping the transaction rolls it back.
        drop(tx);
        return Ok(Some(batch));
    }
    match tx.transaction.commit().map_err(pg("commit")) {
        Ok(()) => batch
            .into_iter()
            .for_each(|operation| operation.finish(None)),
        Err(error) => {
            // Unavailable here means the outcome is unknown: the callers are told so.
            tracing::error!(%error, "commit failed; failing the batch");
            batch
                .into_iter()
                .for_each(|operation| operation.finish(Some(&error)));
        }
    }
    Ok(None)
}

/// Runs one operation in a transaction of its own, again (after a short random pause)
/// while it loses conflicts, at most [`MAX_ATTEMPTS`] times.
fn run_alone(connection: &mut Connection, mut operation: Queued) {
    let mut outcome: Option<Error> = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let transaction = match connection.client.transaction() {
            Ok(transaction) => transaction,
            Err(error) => {
                outcome = Some(classify("begin a write", error));
                break;
            }
        };
        let mut tx = Tx {
            transaction,
            statements: &mut connection.statements,
        };
        if operation.durability() == Durability::Relaxed
            && let Err(error) = tx.batch_execute("SET LOCAL synchronous_commit = off")
        {
            outcome = Some(classify("begin a write", error));
            break;
        }
        match operation.run(&mut tx, false) {
            Ok(true) if !operation.succeeded() => {
                // Its own error: nothing of it is kept.
                drop(tx);
                return operation.finish(None);
            }
            Ok(true) => {
                outcome = tx.transaction.commit().map_err(pg("commit")).err();
                return operation.finish(outcome.as_ref());
            }
            Ok(false) => {
                drop(tx);
                outcome = Some(Error::Database {
                    operation: "write",
                    source: format!("lost a deadlock or serialization conflict {attempt} times")
                        .into(),
                });
                std::thread::sleep(Duration::from_millis(
                    rand::random_range(1..10) * attempt as u64,
                ));
            }
            Err(error) => {
                outcome = Some(error);
                break;
            }
        }
    }
    operation.finish(outcome.as_ref());
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

    async fn record_runners(&self, runners: Vec<RunnerSeen>) -> Result<()> {
        if runners.is_empty() {
            return Ok(());
        }
        // A short transaction of its own on the pool, as telemetry: presence never waits
        // behind (nor holds up) the writers' batches of claims and reports.
        self.write_apart(move |tx| runners::record_runners(tx, &runners))
            .await
    }

    async fn list_runners(
        &self,
        cluster: Option<String>,
        seen_since: i64,
    ) -> Result<Vec<RunnerSeen>> {
        self.read(move |tx| runners::list_runners(tx, cluster.as_deref(), seen_since))
            .await
    }

    async fn delete_runners_before(&self, seen_before: i64) -> Result<usize> {
        self.write_apart(move |tx| runners::delete_runners_before(tx, seen_before))
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
        let job = Arc::new(job);
        // The insert is idempotent by job id, so a submission whose commit outcome was lost
        // with the connection is simply made again: the caller gets its one job either way,
        // where a retry of its own would mint a new id and could make two.
        let mut attempt = 0;
        loop {
            let submitted = job.clone();
            match self
                .write(move |tx| tasks::insert_job(tx, &submitted, now_millis()))
                .await
            {
                Err(Error::Unavailable { .. }) if attempt < SUBMIT_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                other => break other?,
            }
        }
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

    async fn get_tasks(&self, job: Uuid, ids: Vec<Uuid>) -> Result<Vec<TaskSummary>> {
        self.read(move |tx| read::get_tasks(tx, job, &ids)).await
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

    // ---- console sessions (migration console_sessions) ----
    async fn create_console_session(&self, session: ConsoleSession) -> Result<()> {
        self.write_apart(move |tx| sessions::create(tx, &session))
            .await
    }

    async fn get_console_session(
        &self,
        session_hash: [u8; 32],
        now_millis: i64,
    ) -> Result<Option<ConsoleSession>> {
        self.read(move |tx| sessions::get(tx, session_hash, now_millis))
            .await
    }

    async fn delete_console_session(&self, session_hash: [u8; 32]) -> Result<bool> {
        self.write_apart(move |tx| sessions::delete(tx, session_hash))
            .await
    }

    async fn delete_expired_console_sessions(&self, now_millis: i64) -> Result<usize> {
        self.write_apart(move |tx| sessions::delete_expired(tx, now_millis))
            .await
    }
    // ---- end of console sessions ----

    async fn insert_telemetry(
        &self,
        kind: TelemetryKind,
        records: Vec<TelemetryRecord>,
    ) -> Result<()> {
        self.write_apart(move |tx| releases::insert_telemetry(tx, kind, &records, now_millis()))
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

    async fn count_telemetry_by_severity(
        &self,
        kind: TelemetryKind,
        trace_id: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(i32, u64)>> {
        self.read(move |tx| releases::count_telemetry_by_severity(tx, kind, &trace_id, limit))
            .await
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

    /// PostgreSQL text cannot hold NUL. A report carrying one fails alone, with an error
    /// that says so, and the other report and the claims of the same call stand: otherwise
    /// a runner would send the same call for ever.
    #[tokio::test]
    async fn a_report_the_database_refuses_fails_alone_in_its_batch() {
        use crate::server::store::{Identifier, NewTask, Report};
        let (store, _database) = open().await;
        let identifier = Identifier {
            name: "Leaf".to_string(),
            version: "v1.0".to_string(),
            major: 1,
            minor: 0,
        };
        let task = || NewTask {
            id: Uuid::now_v7(),
            identifier: identifier.clone(),
            input: b"{}".to_vec(),
            display: "Leaf".to_string(),
            cluster: crate::server::store::DEFAULT_CLUSTER_SLUG.to_string(),
            max_retries: 0,
            optional: false,
            depends_on: Vec::new(),
        };
        let job = store
            .submit_job(NewJob {
                id: Uuid::now_v7(),
                name: "nul".to_string(),
                trace_parent: String::new(),
                tasks: vec![task(), task(), task()],
            })
            .await
            .expect("submit");
        let claim = ClaimRequest {
            cluster: crate::server::store::DEFAULT_CLUSTER_SLUG.to_string(),
            identifiers: vec![identifier.clone()],
            claimant: "runner".to_string(),
            lease: Duration::from_secs(30),
        };
        let (_, claimed) = store
            .report_and_claim_batch(Vec::new(), vec![(claim.clone(), 2)])
            .await
            .expect("claim two");
        assert_eq!(claimed.len(), 2);
        let report = |task: &ClaimedTask, display: &str| {
            Report::Computed(ComputedReport {
                task_id: task.id,
                claimant: "runner".to_string(),
                display: display.to_string(),
                progress: Vec::new(),
                subtasks: Vec::new(),
            })
        };
        let (outcomes, more) = store
            .report_and_claim_batch(
                vec![
                    report(&claimed[0], "bad\0display"),
                    report(&claimed[1], "fine"),
                ],
                vec![(claim, 1)],
            )
            .await
            .expect("the call as a whole succeeds");
        assert!(
            matches!(&outcomes[0], Err(Error::Unstorable { .. })),
            "the NUL report fails alone: {:?}",
            outcomes[0]
        );
        assert!(
            outcomes[0]
                .as_ref()
                .is_err_and(|error| error.to_string().contains("NUL")),
            "{:?}",
            outcomes[0]
        );
        assert_eq!(
            outcomes[1].as_ref().ok(),
            Some(&ReportOutcome::Applied(
                crate::api::workflows_v1::TaskState::Computed
            ))
        );
        assert_eq!(more.len(), 1, "the call's claim stands");
        let job = store.get_job(job.id).await.expect("job");
        let computed = job
            .stats
            .tasks_by_state
            .iter()
            .find(|(state, _)| *state == crate::api::workflows_v1::TaskState::Computed)
            .map(|(_, count)| *count);
        assert_eq!(
            computed,
            Some(1),
            "only the fine report was applied: {job:?}"
        );
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

//! The orchestrator server: the Tilebox workflows gRPC API over a durable store.
//!
//! Requests flow services -> scheduler -> store. The server owns the listener (with
//! TCP_NODELAY set on every accepted connection; tonic's own setting is ignored for custom
//! listeners) and the lease reaper.
//!
//! Layout:
//! - `mod.rs`: `Options`, `Server` (bind, serve, shutdown), `Error`
//! - `artifacts.rs`: release artifact bytes, content-addressed under the data dir
//! - `auth.rs`: authentication (flat tokens, scoped keys) and the permission table
//! - `console/`: the web console (server-rendered pages on the API port)
//! - `keys.rs`: the keys file of scoped API keys
//! - `presence.rs`: which runners are connected (kept in memory, flushed to the store)
//! - `tls.rs`: the optional TLS of the port (certificate and key, concurrent handshakes)
//! - `scheduler/`: scheduling policy (submissions, long-poll, leases)
//! - `signals.rs`: work and deployment wake-ups, within a server and across replicas
//! - `services/`: the gRPC services
//! - `store/`: the `Store` trait and its backends

pub mod artifacts;
pub mod auth;
pub mod console;
pub mod keys;
pub mod presence;
pub mod scheduler;
pub mod services;
pub mod signals;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;

use crate::api::selfhosted_v1::artifact_service_server::ArtifactServiceServer;
use crate::api::selfhosted_v1::deployment_service_server::DeploymentServiceServer;
use crate::api::selfhosted_v1::runner_service_server::RunnerServiceServer;
use crate::api::selfhosted_v1::work_service_server::WorkServiceServer;
use crate::api::workflows_v1::job_service_server::JobServiceServer;
use crate::api::workflows_v1::task_service_server::TaskServiceServer;
use crate::api::workflows_v1::telemetry_query_service_server::TelemetryQueryServiceServer;
use crate::api::workflows_v1::workflows_service_server::WorkflowsServiceServer;
use scheduler::Scheduler;
use signals::Signals;
use store::Store;
use store::postgres::PgStore;
use store::sqlite::SqliteStore;

/// How long in-flight calls get to finish after the shutdown signal. A client that never
/// lets its connection close (a frozen runner) must not keep the server up; what the server
/// acknowledged is already committed, so stopping then loses nothing.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What can stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("cannot remove unfinished uploads")]
    Artifacts(#[from] artifacts::Error),
    #[error(transparent)]
    Keys(#[from] keys::Error),
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// The SQLite database and the artifacts live here (unused with `database`).
    pub data_dir: PathBuf,
    /// Keep the state in PostgreSQL instead (several replicas may share it).
    pub database: Option<Database>,
    /// Accepted API keys; empty means an open development server.
    pub tokens: Vec<String>,
    /// The keys file of scoped API keys, read again whenever it changes.
    pub keys_file: Option<PathBuf>,
    /// Largest release artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// How long logs and spans are kept.
    pub telemetry_retention: std::time::Duration,
    pub scheduler: scheduler::Options,
    pub limits: Limits,
    /// The certificate and key to serve TLS with; `None` serves plaintext.
    pub tls: Option<tls::TlsConfig>,
    /// Serve the web console on the API port (`--no-console` turns it off).
    pub console: bool,
}

/// A PostgreSQL database to keep the state in.
#[derive(Clone)]
pub struct Database {
    /// `postgres://user:password@host:port/database`; never logged.
    pub url: String,
    /// Most connections opened for reads.
    pub readers: usize,
    /// Writer connections.
    pub writers: usize,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Database")
            .field("url", &"(not shown: it may hold a password)")
            .field("readers", &self.readers)
            .field("writers", &self.writers)
            .finish()
    }
}

/// What one message, export or connection may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest gRPC message received or sent, in bytes (a computed task may carry a large
    /// fan-out; a deployment snapshot carries every release of a cluster).
    pub max_message_bytes: usize,
    /// What one OTLP export may carry.
    pub telemetry: services::telemetry::Limits,
    /// Most long polls (`Work`, `NextTask`), and separately most deployment watches, open
    /// at once on one connection.
    pub max_open_calls_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 256 * 1024 * 1024,
            telemetry: services::telemetry::Limits {
                max_body_bytes: 16 * 1024 * 1024,
                max_records: 10_000,
                max_elements: 500_000,
                max_stored_bytes: 64 * 1024 * 1024,
            },
            max_open_calls_per_connection: 64,
        }
    }
}

/// A server bound to its address, ready to serve.
pub struct Server {
    listener: TcpListener,
    scheduler: Scheduler,
    authenticate: auth::Authenticate,
    artifacts: artifacts::ArtifactStorage,
    telemetry_retention: std::time::Duration,
    limits: Limits,
    tls: Option<tls::TlsConfig>,
    console: bool,
    /// The store, for the log line: a file, or `host:port/database`.
    store_description: String,
}

impl Server {
    /// Opens the store and binds the listener.
    pub async fn bind(options: Options) -> Result<Self, Error> {
        let authenticate = auth::Authenticate::new(&options.tokens, options.keys_file)?;
        let (store, signals, artifacts, store_description): (
            Arc<dyn Store>,
            Signals,
            artifacts::ArtifactStorage,
            String,
        ) = match &options.database {
            None => (
                Arc::new(SqliteStore::open(&options.data_dir)?),
                Signals::local(),
                artifacts::ArtifactStorage::Files(artifacts::ArtifactFiles::new(
                    options.data_dir.join("artifacts"),
                    options.max_artifact_bytes,
                )),
                options
                    .data_dir
                    .join(store::sqlite::DATABASE_FILE)
                    .display()
                    .to_string(),
            ),
            Some(database) => {
                let store = PgStore::connect(
                    &database.url,
                    store::postgres::Options {
                        readers: database.readers,
                        writers: database.writers,
                    },
                )
                .await?;
                let signals = Signals::postgres(store.config().clone(), store.target().to_string());
                // Every replica reads every artifact: the bytes live in the database too.
                let artifacts =
                    artifacts::ArtifactStorage::database(&store, options.max_artifact_bytes);
                let description = format!("postgres://{}", store.target());
                (Arc::new(store), signals, artifacts, description)
            }
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Bind {
                address: options.listen,
                source,
            })?;
        // Uploads cut short by a killed server (in the database: only those old enough that
        // no other replica can still be writing them).
        match artifacts.remove_stale_uploads().await? {
            0 => {}
            count => tracing::info!(count, "removed the temporary files of unfinished uploads"),
        }
        Ok(Self {
            listener,
            scheduler: Scheduler::new(store, options.scheduler, signals),
            authenticate,
            telemetry_retention: options.telemetry_retention,
            artifacts,
            limits: options.limits,
            tls: options.tls,
            console: options.console,
            store_description,
        })
    }

    /// The store the server keeps its state in: the SQLite file, or the PostgreSQL
    /// `host:port/database` (never a password).
    pub fn describe_store(&self) -> &str {
        &self.store_description
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let (stop_reaper, reaper_stopped) = tokio::sync::watch::channel(false);
        let reaper_stopped_too = reaper_stopped.clone();
        let reaper = tokio::spawn(self.scheduler.clone().run_lease_reaper(reaper_stopped));
        let (stop_presence, presence_stopped) = tokio::sync::watch::channel(false);
        let presence = tokio::spawn(
            self.scheduler
                .presence()
                .clone()
                .run(self.scheduler.store().clone(), presence_stopped),
        );
        let authenticate = self.authenticate;
        let keys_watch = tokio::spawn(
            authenticate
                .clone()
                .watch_keys_file(reaper_stopped_too.clone()),
        );
        let max_message = self.limits.max_message_bytes;
        let open_calls =
            services::limits::ConnectionLimits::new(self.limits.max_open_calls_per_connection);

        let jobs = JobServiceServer::new(services::jobs::Jobs::new(self.scheduler.clone()))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let tasks = TaskServiceServer::new(services::tasks::Tasks::new(
            self.scheduler.clone(),
            open_calls.clone(),
        ))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let work = WorkServiceServer::new(services::work::Work::new(
            self.scheduler.clone(),
            open_calls.clone(),
        ))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let runners =
            RunnerServiceServer::new(services::runners::Runners::new(self.scheduler.clone()))
                .max_encoding_message_size(max_message);
        let signals = self.scheduler.signals().clone();
        let changes = signals.deployments().clone();
        let console = self.console.then(|| {
            console::ConsoleState::new(
                self.scheduler.clone(),
                authenticate.clone(),
                changes.clone(),
                self.tls.is_some(),
            )
        });
        let watched = changes.subscribe();
        let store = self.scheduler.store().clone();
        let workflows = WorkflowsServiceServer::new(services::workflows::Workflows::new(
            store.clone(),
            changes,
        ))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let artifact_service = ArtifactServiceServer::new(services::artifacts::Artifacts::new(
            store.clone(),
            self.artifacts,
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let deployments = DeploymentServiceServer::new(services::deployments::Deployments::new(
            store.clone(),
            watched,
            open_calls,
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let telemetry = services::telemetry::Telemetry::new(store.clone(), self.limits.telemetry);
        // The official SDK gzips every call on a secure (`https://`) channel.
        let query = TelemetryQueryServiceServer::new(telemetry.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        // An OTLP export over gRPC has the body limit of OTLP/HTTP, and is counted before it
        // is decoded (gzip accepted).
        let otlp_message = self.limits.telemetry.max_body_bytes;
        let logs = services::otlp_grpc::LogsServer::new(telemetry.clone(), otlp_message);
        let traces = services::otlp_grpc::TracesServer::new(telemetry.clone(), otlp_message);
        let retention = tokio::spawn(run_retention(
            store,
            self.telemetry_retention,
            reaper_stopped_too,
        ));

        // gRPC services and the OTLP/HTTP routes share one port (HTTP/2 and HTTP/1.1).
        let routes =
            tonic::service::Routes::new(InterceptedService::new(jobs, authenticate.clone()))
                .add_service(InterceptedService::new(tasks, authenticate.clone()))
                .add_service(InterceptedService::new(work, authenticate.clone()))
                .add_service(InterceptedService::new(runners, authenticate.clone()))
                .add_service(InterceptedService::new(workflows, authenticate.clone()))
                .add_service(InterceptedService::new(
                    artifact_service,
                    authenticate.clone(),
                ))
                .add_service(InterceptedService::new(deployments, authenticate.clone()))
                .add_service(InterceptedService::new(query, authenticate.clone()))
                .add_service(InterceptedService::new(logs, authenticate.clone()))
                .add_service(InterceptedService::new(traces, authenticate.clone()))
                .into_axum_router()
                .merge(services::telemetry::http_routes(telemetry, authenticate));
        // The console answers plain GETs and forms on the same port (no path of it starts
        // with a gRPC package, and it sets no fallback).
        let routes = match console {
            Some(state) => routes
                .merge(console::router(state))
                .layer(axum::middleware::from_fn(console::not_found_for_browsers)),
            None => routes,
        };

        let (shutdown_started, grace_started) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = shutdown_started.send(());
        };
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(routes));
        let serving: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match self.tls {
            None => {
                let incoming = TcpListenerStream::new(self.listener).map(|stream| {
                    let stream = stream?;
                    stream.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(stream)
                });
                Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
            Some(config) => Box::pin(
                router.serve_with_incoming_shutdown(tls::incoming(self.listener, config), shutdown),
            ),
        };
        let grace_over = async {
            match grace_started.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = serving => result,
            () = grace_over => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; stopping anyway");
                Ok(())
            }
        };
        retention.abort();
        keys_watch.abort();
        let _ = stop_reaper.send(true);
        let _ = reaper.await;
        // Its last flush records the runners' final contacts.
        let _ = stop_presence.send(true);
        let _ = presence.await;
        signals.stop();
        Ok(result?)
    }
}

/// Deletes logs and spans older than `retention`, and expired console sessions, checking
/// every `retention / 10` (at most hourly, at least every second).
async fn run_retention(
    store: Arc<dyn Store>,
    retention: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let period = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
    );
    loop {
        // Saturating: a retention past the timestamp range deletes nothing.
        let retention_millis = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = crate::api::convert::now_millis().saturating_sub(retention_millis);
        match store.delete_telemetry_before(cutoff).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "deleted logs and spans past their retention"),
            Err(error) => tracing::error!(%error, "telemetry retention cleanup failed"),
        }
        // Expired console sessions are already refused; this only frees their rows.
        match store
            .delete_expired_console_sessions(crate::api::convert::now_millis())
            .await
        {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "deleted expired console sessions"),
            Err(error) => tracing::error!(%error, "console session cleanup failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}

//! `tilebox server`: runs the orchestrator.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::UserError;
use crate::api::limits;
use crate::server::{self, Server, scheduler};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// The keys file of scoped API keys (`tilebox server keys` writes it); read again
    /// whenever it changes.
    #[arg(long, env = crate::env::SERVER_KEYS_FILE)]
    keys_file: Option<PathBuf>,
    /// Address to listen on, `HOST:PORT`; port 0 picks a free one (the address is printed on
    /// stdout). A non-loopback address needs a --token, a --keys-file or
    /// --allow-unauthenticated.
    #[arg(long, default_value = "127.0.0.1:8083", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Where the database lives [default: the user's data dir, e.g. ~/.local/share/tilebox].
    /// Unused with --database.
    #[arg(long, env = crate::env::DATA_DIR)]
    data_dir: Option<PathBuf>,
    /// Keep the state in PostgreSQL instead of SQLite: `postgres://USER:PASSWORD@HOST:PORT/DB`.
    /// Several servers on one database serve the same jobs (README: "Running on
    /// PostgreSQL"). Release artifacts are kept in the database too.
    #[arg(long, env = crate::env::DATABASE_URL, hide_env_values = true, value_name = "URL")]
    database: Option<String>,
    /// Most connections a server opens for reads, with --database.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    database_readers: u16,
    /// Writer connections, with --database: each commits its own batches of writes. A server
    /// opens readers + writers + 2 connections at most (one each to listen for and to notify
    /// the other replicas).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    database_writers: u16,
    /// An accepted API key (repeatable; never empty). Without any, the server is open: allowed
    /// on a loopback --listen (local development), elsewhere only with --allow-unauthenticated.
    #[arg(long = "token", env = crate::env::SERVER_TOKENS, value_delimiter = ',', hide_env_values = true)]
    tokens: Vec<String>,
    /// Start without any --token on a non-loopback --listen: every client on the network may
    /// do everything.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Lease granted when a task is handed out, in seconds (at least 2).
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// Longest lease an extension grants, in seconds.
    #[arg(long, default_value_t = 60)]
    max_lease_seconds: u64,
    /// How long NextTask waits for work before answering idle, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    long_poll_ms: u64,
    /// How long a runner stays connected (`runner list`, the console) without a call, in
    /// milliseconds [default: 15000, longer with long leases]. Hidden: for tests.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    presence_timeout_ms: Option<u64>,
    /// Largest task input accepted, in bytes.
    #[arg(long, default_value_t = 2048)]
    max_input_bytes: usize,
    /// Most tasks one submission may hold: a job, or the subtasks one task execution submits.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_TASKS_PER_SUBMISSION)]
    max_tasks_per_submission: usize,
    /// Largest release artifact accepted, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_artifact_bytes: u64,
    /// How long logs and spans are kept: a number with a unit, e.g. 7d, 12h, 30m, 45s (at
    /// most 100 years).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    telemetry_retention: Duration,
    // ---- limits (README lists them) ----
    /// Largest gRPC message the server receives or sends, in bytes.
    #[arg(long, default_value_t = server::Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Largest OTLP export (HTTP body or gRPC message), in bytes.
    #[arg(long, default_value_t = server::Limits::default().telemetry.max_body_bytes)]
    max_otlp_body_bytes: usize,
    /// Most log records or spans in one OTLP export.
    #[arg(long, default_value_t = server::Limits::default().telemetry.max_records)]
    max_otlp_records: usize,
    /// Most other elements in one OTLP export: attributes at every level, events, links,
    /// array and key-value list entries, resource and scope groups.
    #[arg(long, default_value_t = server::Limits::default().telemetry.max_elements)]
    max_otlp_elements: usize,
    /// Most bytes one OTLP export stores (each record with its resource and scope).
    #[arg(long, default_value_t = server::Limits::default().telemetry.max_stored_bytes)]
    max_otlp_stored_bytes: usize,
    /// Most long polls, and most deployment watches, open at once on one connection (at
    /// least 1).
    #[arg(long, default_value_t = server::Limits::default().max_open_calls_per_connection,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u32).range(1..), |limit| limit as usize))]
    max_open_calls_per_connection: usize,
    // ---- TLS (README: "Running with TLS") ----
    /// PEM certificate chain (leaf first) to serve gRPC and OTLP/HTTP over TLS; needs
    /// --tls-key. Without it the port speaks plaintext.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Do not serve the web console (it is served at http://ADDR/ on the API port).
    #[arg(long, env = crate::env::SERVER_NO_CONSOLE,
          value_parser = clap::builder::BoolishValueParser::new())]
    no_console: bool,
    /// Log level of the server's own logs (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Create, list, rotate and revoke scoped API keys.
    #[command(subcommand)]
    Keys(super::keys::KeysCommand),
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir()
        .map(|directory| directory.join("tilebox"))
        .context("cannot find the user's data directory; pass --data-dir")
}

pub async fn run(arguments: ServerArgs, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(ServerCommand::Keys(command)) = arguments.command {
        return super::keys::run(command, json);
    }
    check_retention(arguments.telemetry_retention)?;
    let filter = tracing_subscriber::EnvFilter::try_new(format!("tilebox={}", arguments.log_level))
        .with_context(|| format!("invalid --log-level `{}`", arguments.log_level))?;
    super::init_tracing(filter);
    let data_dir = match (arguments.data_dir, &arguments.database) {
        (Some(directory), _) => directory,
        // Unused with PostgreSQL: a container without a home directory must still start.
        (None, Some(_)) => PathBuf::new(),
        (None, None) => default_data_dir()?,
    };
    check_tokens(
        &arguments.tokens,
        std::env::var_os(crate::env::SERVER_TOKENS),
    )?;
    check_open_listen(
        arguments.listen,
        !arguments.tokens.is_empty() || arguments.keys_file.is_some(),
        arguments.allow_unauthenticated,
    )?;
    let tokens = arguments.tokens;
    let tls = load_tls(arguments.tls_cert.as_deref(), arguments.tls_key.as_deref())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = server::Options {
        listen: arguments.listen,
        data_dir: data_dir.clone(),
        database: arguments.database.map(|url| server::Database {
            url,
            readers: usize::from(arguments.database_readers),
            writers: usize::from(arguments.database_writers),
        }),
        tokens,
        keys_file: arguments.keys_file,
        max_artifact_bytes: arguments.max_artifact_bytes,
        telemetry_retention: arguments.telemetry_retention,
        scheduler: scheduler::Options {
            lease: Duration::from_secs(arguments.lease_seconds),
            max_lease: Duration::from_secs(arguments.max_lease_seconds),
            long_poll: Duration::from_millis(arguments.long_poll_ms),
            max_input_bytes: arguments.max_input_bytes,
            max_tasks_per_submission: arguments.max_tasks_per_submission,
            presence_timeout: arguments.presence_timeout_ms.map(Duration::from_millis),
            ..scheduler::Options::default()
        },
        limits: server::Limits {
            max_message_bytes: arguments.max_message_bytes,
            telemetry: server::services::telemetry::Limits {
                max_body_bytes: arguments.max_otlp_body_bytes,
                max_records: arguments.max_otlp_records,
                max_elements: arguments.max_otlp_elements,
                max_stored_bytes: arguments.max_otlp_stored_bytes,
            },
            max_open_calls_per_connection: arguments.max_open_calls_per_connection,
        },
        tls,
        console: !arguments.no_console,
    };
    let open_server = options.tokens.is_empty() && options.keys_file.is_none();
    let server = Server::bind(options).await?;
    let data = server.describe_store();
    let address = server
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(%address, store = %data, open = open_server, tls = scheme == "https", "tilebox server started");
    if open_server && !address.ip().to_canonical().is_loopback() {
        tracing::warn!(
            %address,
            "UNAUTHENTICATED SERVER on a non-loopback address (--allow-unauthenticated): every \
             client that can reach {address} may publish, deploy, cancel and claim tasks"
        );
    } else if open_server {
        tracing::warn!(
            "no --token configured: every local client is accepted (local development only)"
        );
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {scheme}://{address}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
    }
    server.serve(shutdown_signal()).await?;
    tracing::info!("tilebox server stopped");
    Ok(ExitCode::SUCCESS)
}

/// The TLS configuration of `--tls-cert`/`--tls-key` (clap makes them come together); an
/// unreadable or invalid file is the user's to fix.
fn load_tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<server::tls::TlsConfig>, UserError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    server::tls::TlsConfig::load(cert, key)
        .map(Some)
        .map_err(|error| {
            UserError::caused_by(
                error,
                Some("give a PEM certificate chain (leaf first) with --tls-cert and its PEM private key with --tls-key"),
            )
        })
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Refuses an empty token: an unset secret (`TILEBOX_SERVER_TOKENS=`, `--token ""`, or an
/// empty entry such as `a,,b`) must not start an open server. `environment` is the raw
/// variable: clap treats an empty one as absent, so it is checked here too.
fn check_tokens(
    tokens: &[String],
    environment: Option<std::ffi::OsString>,
) -> Result<(), UserError> {
    if let Some(value) = environment
        && value.to_string_lossy().split(',').any(str::is_empty)
    {
        return Err(UserError::with_hint(
            format!(
                "{} is set but empty or holds an empty token",
                crate::env::SERVER_TOKENS
            ),
            "set it to the accepted API keys, comma-separated with none empty, or unset it for \
             an open server on a loopback address",
        ));
    }
    if tokens.iter().any(String::is_empty) {
        return Err(UserError::with_hint(
            "--token is empty",
            "give a non-empty API key to --token, or leave --token out for an open server on a \
             loopback address",
        ));
    }
    Ok(())
}

/// Refuses an open server (no token, no keys file) on a non-loopback address unless the
/// operator said so with --allow-unauthenticated. `0.0.0.0` and `::` count as non-loopback.
fn check_open_listen(
    listen: SocketAddr,
    authenticated: bool,
    allow_unauthenticated: bool,
) -> Result<(), UserError> {
    if !authenticated && !allow_unauthenticated && !listen.ip().to_canonical().is_loopback() {
        return Err(UserError::with_hint(
            format!(
                "refusing to start an unauthenticated server on the non-loopback address {listen}"
            ),
            format!(
                "give API keys with --keys-file (`tilebox server keys create`), --token or {}, \
                 listen on a loopback address such as 127.0.0.1, or pass \
                 --allow-unauthenticated to accept every client on the network",
                crate::env::SERVER_TOKENS
            ),
        ));
    }
    Ok(())
}

/// Parses `--listen`: an IP address with a port, or a host name (e.g. `localhost:8083`)
/// resolved to its first address.
pub(super) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|error| format!("`{text}` is not an address like 127.0.0.1:8083: {error}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// Parses a duration such as `7d`, `12h`, `1h 30m`, `45s` or `500ms` (humantime's units);
/// a bare number is seconds.
/// A retention beyond [`limits::MAX_TELEMETRY_RETENTION`] is refused rather than letting its
/// cutoff leave the range of a timestamp (it once wrapped negative and deleted everything).
fn check_retention(retention: Duration) -> Result<(), UserError> {
    if retention > limits::MAX_TELEMETRY_RETENTION {
        return Err(UserError::with_hint(
            format!(
                "--telemetry-retention of {} is too long; the limit is {}",
                humantime::format_duration(retention),
                humantime::format_duration(limits::MAX_TELEMETRY_RETENTION)
            ),
            "give a retention of at most 100 years, e.g. 7d or 365d",
        ));
    }
    Ok(())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration like 7d, 12h, 30m or 45s: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tokens_are_refused() {
        assert!(check_tokens(&["a".into()], None).is_ok());
        assert!(check_tokens(&[], None).is_ok());
        assert!(check_tokens(&["".into()], None).is_err());
        assert!(check_tokens(&["a".into(), "".into()], None).is_err());
        assert!(check_tokens(&[], Some("".into())).is_err());
        assert!(check_tokens(&["a".into(), "b".into()], Some("a,,b".into())).is_err());
        assert!(check_tokens(&["a".into()], Some("a".into())).is_ok());
    }

    #[test]
    fn only_loopback_may_be_open_without_the_flag() {
        let open = |address: &str, allow| {
            check_open_listen(parse_listen(address).expect("address"), false, allow).is_ok()
        };
        assert!(open("127.0.0.1:0", false));
        assert!(open("127.8.9.10:0", false));
        assert!(open("[::1]:0", false));
        assert!(open("[::ffff:127.0.0.1]:0", false));
        assert!(open("localhost:0", false));
        assert!(!open("0.0.0.0:0", false));
        assert!(!open("[::]:0", false));
        assert!(!open("10.1.2.3:0", false));
        assert!(open("0.0.0.0:0", true));
        let listen = parse_listen("0.0.0.0:0").expect("address");
        assert!(check_open_listen(listen, true, false).is_ok());
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(
            parse_duration("7x")
                .unwrap_err()
                .contains("`7x` is not a duration")
        );
        assert!(parse_duration("soon").is_err());
    }
}

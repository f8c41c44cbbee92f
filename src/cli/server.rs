//! `tilebox server`: runs the orchestrator.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::UserError;
use crate::api::limits;
use crate::server::{self, Server, scheduler};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on; port 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    /// Where the database lives [default: the user's data dir, e.g. ~/.local/share/tilebox].
    #[arg(long, env = crate::env::DATA_DIR)]
    data_dir: Option<PathBuf>,
    /// An accepted API key (repeatable). Without any, the server is open (local development).
    #[arg(long = "token", env = crate::env::SERVER_TOKENS, value_delimiter = ',', hide_env_values = true)]
    tokens: Vec<String>,
    /// Lease granted when a task is handed out, in seconds (at least 2).
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// Longest lease an extension grants, in seconds.
    #[arg(long, default_value_t = 60)]
    max_lease_seconds: u64,
    /// How long NextTask waits for work before answering idle, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    long_poll_ms: u64,
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
    /// Log level of the server's own logs (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir()
        .map(|directory| directory.join("tilebox"))
        .context("cannot find the user's data directory; pass --data-dir")
}

pub async fn run(arguments: ServerArgs) -> anyhow::Result<ExitCode> {
    check_retention(arguments.telemetry_retention)?;
    let filter = tracing_subscriber::EnvFilter::try_new(format!("tilebox={}", arguments.log_level))
        .with_context(|| format!("invalid --log-level `{}`", arguments.log_level))?;
    super::init_tracing(filter);
    let data_dir = match arguments.data_dir {
        Some(directory) => directory,
        None => default_data_dir()?,
    };
    let tokens: Vec<String> = arguments
        .tokens
        .into_iter()
        .filter(|token| !token.is_empty())
        .collect();
    let tls = load_tls(arguments.tls_cert.as_deref(), arguments.tls_key.as_deref())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = server::Options {
        listen: arguments.listen,
        data_dir: data_dir.clone(),
        tokens,
        max_artifact_bytes: arguments.max_artifact_bytes,
        telemetry_retention: arguments.telemetry_retention,
        scheduler: scheduler::Options {
            lease: Duration::from_secs(arguments.lease_seconds),
            max_lease: Duration::from_secs(arguments.max_lease_seconds),
            long_poll: Duration::from_millis(arguments.long_poll_ms),
            max_input_bytes: arguments.max_input_bytes,
            max_tasks_per_submission: arguments.max_tasks_per_submission,
            ..scheduler::Options::default()
        },
        limits: server::Limits {
            max_message_bytes: arguments.max_message_bytes,
            telemetry: server::services::telemetry::Limits {
                max_body_bytes: arguments.max_otlp_body_bytes,
                max_records: arguments.max_otlp_records,
                max_stored_bytes: arguments.max_otlp_stored_bytes,
            },
            max_open_calls_per_connection: arguments.max_open_calls_per_connection,
        },
        tls,
    };
    let open_server = options.tokens.is_empty();
    let server = Server::bind(options).await?;
    let address = server
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(%address, data_dir = %data_dir.display(), open = open_server, tls = scheme == "https", "tilebox server started");
    if open_server {
        tracing::warn!("no --token configured: every client is accepted (local development only)");
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

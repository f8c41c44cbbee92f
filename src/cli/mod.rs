//! The command-line interface: argument structs and dispatch, one file per command family.
//!
//! No business logic lives here: commands parse arguments, call `client` or `server`, and
//! print results (tables for people, one JSON document with `--json`).
//!
//! Layout:
//! - `mod.rs`: the command tree, global options, exit codes
//! - `server.rs`: `tilebox server`
//! - `cluster.rs`: `tilebox cluster ...`
//! - `job.rs`: `tilebox job ...`
//! - `task.rs`: `tilebox task run` (in-process execution of a local project; `--from-job`
//!   reads a job's task from a server)
//! - `runner.rs`: `tilebox runner start`
//! - `parallel.rs`: `tilebox parallel -n N -- CMD`
//! - `dev.rs`: `tilebox dev [DIR]` (server and reloading runner in one process)
//! - `workflow.rs`: `tilebox workflow ...` (the release pipeline)
//! - `init.rs`: `tilebox workflow init` (all or nothing)
//! - `telemetry.rs`: `tilebox job logs` and `tilebox job spans`
//! - `output.rs`: tables, JSON, state names
//! - `progress.rs`: progress bars on stderr, and when they are shown

mod cluster;
mod dev;
mod init;
mod job;
mod keys;
mod output;
mod parallel;
mod progress;
mod runner;
mod server;
mod task;
mod telemetry;
mod workflow;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client;

/// What `tilebox --version` prints after the name: the crate version and the git commit.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TILEBOX_GIT_COMMIT"),
    ")"
);

/// The API URL when none is given: the local server's default listen address.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8083";

#[derive(Debug, Parser)]
#[command(
    name = "tilebox",
    version = VERSION,
    about = "Self-hostable Tilebox workflows: server, releases and in-process runner"
)]
pub struct Cli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator server (the Tilebox workflows gRPC API).
    Server(Box<server::ServerArgs>),
    /// Manage clusters.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Submit, inspect, wait for, retry and cancel jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Create workflows; build, publish and deploy releases.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Run tasks of a local project in-process (debugging; reads a job with --from-job).
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Run deployed releases (the release runner).
    #[command(subcommand)]
    Runner(runner::RunnerCommand),
    /// Run N copies of a command with prefixed output.
    Parallel(parallel::ParallelArgs),
    /// Develop a project: a server and a runner of the project in one process, reloading
    /// the project when its files change.
    Dev(dev::DevArgs),
    /// Print a shell completion script to stdout (e.g. `tilebox completions bash > ~/.local/share/bash-completion/completions/tilebox`).
    Completions(CompletionsArgs),
    /// Host a release in this process's main interpreter (used by the runner itself).
    #[command(hide = true)]
    PythonHost(crate::python::child::HostArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Writes the completion script for `arguments.shell` to stdout.
fn print_completions(arguments: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    use std::io::Write;
    // Into a buffer first: `generate` panics when stdout is a closed pipe (`| head`).
    // Without the hidden commands (`python-host`), which `clap_complete` would offer.
    let full = Cli::command();
    let mut command = clap::Command::new("tilebox")
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|subcommand| !subcommand.is_hide_set())
                .cloned(),
        );
    let mut script = Vec::new();
    clap_complete::generate(arguments.shell, &mut command, "tilebox", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!(
            "cannot write the completion script: {error}"
        )),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Options every API command takes.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// URL of the Tilebox API.
    #[arg(long, global = true, env = crate::env::API_URL, default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, global = true, env = crate::env::API_KEY, hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM CA certificate to verify an `https://` API URL with, instead of the system's roots.
    #[arg(long, global = true, value_name = "PEM", env = crate::env::CA_CERT)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Print one JSON document instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ApiArgs {
    /// A connected API client.
    pub async fn connect(&self) -> Result<client::Client, client::Error> {
        client::Client::connect_with_ca(
            &self.api_url,
            self.api_key.as_deref(),
            self.ca_cert.as_deref(),
        )
        .await
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The child host drives Python from the main thread and needs no async runtime.
    if let Command::PythonHost(arguments) = cli.command {
        return Ok(crate::python::child::serve(arguments));
    }
    if let Command::Completions(arguments) = &cli.command {
        return print_completions(arguments);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| anyhow::anyhow!("cannot start the async runtime: {error}"))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(arguments) => server::run(*arguments, cli.api.json).await,
            Command::Cluster(command) => cluster::run(command, &cli.api).await,
            Command::Job(command) => job::run(command, &cli.api).await,
            Command::Task(command) => task::run(command, &cli.api).await,
            Command::Workflow(command) => workflow::run(command, &cli.api).await,
            Command::Runner(command) => runner::run(command, &cli.api).await,
            Command::Parallel(arguments) => parallel::run(arguments).await,
            Command::Dev(arguments) => dev::run(arguments).await,
            Command::PythonHost(_) | Command::Completions(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}

/// Sends the process's own logs to stderr, coloured only on a terminal and without
/// `NO_COLOR`.
pub fn init_tracing(filter: tracing_subscriber::EnvFilter) {
    install_tracing(filter, false);
}

/// A runner's logs (`runner start`, `dev`) at `level` for tilebox's own targets: as
/// [`init_tracing`], and its lines about a task also to the task's job
/// ([`crate::runner::RunnerLogs`]).
pub fn init_runner_tracing(level: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let filter = tracing_subscriber::EnvFilter::try_new(format!("tilebox={level}"))
        .with_context(|| format!("invalid --log-level `{level}`"))?;
    install_tracing(filter, true);
    Ok(())
}

/// Logs to stderr through the progress bars' writer (a log line never lands inside a bar).
fn install_tracing(filter: tracing_subscriber::EnvFilter, runner_logs: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let colour =
        std::io::stderr().is_terminal() && std::env::var_os(crate::env::NO_COLOR).is_none();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(progress::LogWriter)
                .with_ansi(colour),
        )
        .with(runner_logs.then_some(crate::runner::RunnerLogs))
        .try_init();
}

/// A user or input error: exit code 1, with an optional hint for the fix.
///
/// Made from a typed error with [`UserError::caused_by`], it shows that error's message and
/// keeps its causes, so `error: {:#}` prints the whole chain.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl UserError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            cause: None,
        }
    }

    pub fn with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            hint: Some(hint.into()),
            ..Self::new(message)
        }
    }

    /// A user error that is `error`: its message, its causes, and `hint`.
    pub fn caused_by(
        error: impl std::error::Error + Send + Sync + 'static,
        hint: Option<&str>,
    ) -> Self {
        Self {
            message: error.to_string(),
            hint: hint.map(str::to_string),
            cause: Some(Box::new(error)),
        }
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for UserError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The cause's own message is this error's message; the chain goes on from its source.
        self.cause.as_ref().and_then(|cause| cause.source())
    }
}

/// A UUID given on the command line; `what` names it in the error (`job id`, `cursor`).
pub fn parse_id(what: &str, value: &str) -> Result<uuid::Uuid, UserError> {
    uuid::Uuid::parse_str(value).map_err(|_| {
        UserError::with_hint(
            format!("invalid {what} `{value}`: not a UUID"),
            "job ids look like 0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f; `tilebox job list` shows them",
        )
    })
}

/// The cache directory: `--cache-dir` when given, else `$XDG_CACHE_HOME/tilebox`, else
/// `~/.cache/tilebox`.
pub fn cache_dir(given: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    match given {
        Some(directory) => Ok(directory.to_path_buf()),
        None => dirs::cache_dir()
            .map(|directory| directory.join("tilebox"))
            .ok_or_else(|| {
                UserError::with_hint("cannot find the user's cache directory", "pass --cache-dir")
                    .into()
            }),
    }
}

/// 1 for errors caused by the user's input or the state they asked about, 2 for the rest.
pub fn exit_code_of(error: &anyhow::Error) -> ExitCode {
    if error.downcast_ref::<UserError>().is_some() {
        return ExitCode::from(1);
    }
    if let Some(error) = error.downcast_ref::<client::Error>() {
        return if error.is_user_error() {
            ExitCode::from(1)
        } else {
            ExitCode::from(2)
        };
    }
    ExitCode::from(2)
}

/// The hint to print under an error, if it has one.
pub fn hint_of(error: &anyhow::Error) -> Option<String> {
    if let Some(error) = error.downcast_ref::<UserError>() {
        return error.hint.clone();
    }
    error
        .downcast_ref::<client::Error>()
        .and_then(client::Error::hint)
}

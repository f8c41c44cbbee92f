//! `tilebox runner start`: the release runner (or, with `--project`, a direct runner of a
//! local project, loaded in-process without publishing).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{ApiArgs, UserError};
use crate::python;
use crate::runner::prepare::{self, EnvironmentSource};
use crate::runner::{self, Runner, Shutdown, Stopped};

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// Run the cluster's deployed releases (or a local project with --project).
    Start(StartArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The cluster to serve [default: the default cluster].
    #[arg(long, env = crate::env::CLUSTER)]
    cluster: Option<String>,
    /// Slots: tasks run in parallel (each release gets one interpreter per slot).
    #[arg(short = 'n', long = "slots", default_value_t = 1)]
    slots: usize,
    /// Exit once there is no more work instead of waiting for more.
    #[arg(long)]
    stop_when_idling: bool,
    /// The runner's own log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Verbose runner logs (same as --log-level debug).
    #[arg(long, conflicts_with = "quiet")]
    debug: bool,
    /// Quiet console: no task logs, only warnings and errors.
    #[arg(long)]
    quiet: bool,
    /// Cache directory for artifacts, releases and venvs [default: $XDG_CACHE_HOME/tilebox or ~/.cache/tilebox].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Direct mode: run this local project's runner object (no release).
    #[arg(long)]
    project: Option<PathBuf>,
    #[command(flatten)]
    timings: Timings,
    /// The longest pause, in seconds, from a task identifier this runner could not run (its
    /// release's host failed or will not start): it stops claiming that identifier's tasks
    /// for 1 s after the first such failure, doubling with each one in a row up to this, and
    /// serves other jobs meanwhile. A run of the task's own code ends the pause.
    #[arg(long, default_value_t = runner::FAILURE_BACKOFF_MAX.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    failure_backoff_max_seconds: u64,
}

/// How long a runner (`runner start`, `dev`) gives shutdown, loading and environments.
#[derive(Debug, Args)]
pub(super) struct Timings {
    /// Seconds running tasks get to finish after the first interrupt.
    #[arg(long, default_value_t = 30)]
    pub grace_seconds: u64,
    /// Seconds loading code may take: each of the placement probe, a child host's start and
    /// an interpreter's start. A release whose import takes longer is skipped and tried
    /// again later with backoff.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub import_timeout_seconds: u64,
    /// Seconds one `uv sync` of an environment may take before it is stopped (and tried
    /// again later with backoff).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sync_timeout_seconds: u64,
}

pub async fn run(command: RunnerCommand, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    match command {
        RunnerCommand::Start(arguments) => start(arguments, api).await,
    }
}

fn init_logging(arguments: &StartArgs) -> anyhow::Result<()> {
    let level = if arguments.debug {
        "debug"
    } else if arguments.quiet {
        "warn"
    } else {
        arguments.log_level.as_str()
    };
    super::init_runner_tracing(level)
}

/// The local project as a release (direct mode), its environment synced into its `.venv`.
async fn project_release(
    directory: &std::path::Path,
    cache_dir: &std::path::Path,
    sync_timeout: Duration,
) -> anyhow::Result<python::Release> {
    let mut source = prepare::project_source(directory, None, EnvironmentSource::Project)
        .map_err(|error| UserError::caused_by(error, None))?;
    source.sync_timeout = sync_timeout;
    // A missing uv's error says where it looked and how to install it.
    prepare::release(source, cache_dir)
        .await
        .map_err(|error| UserError::caused_by(error, None).into())
}

async fn start(arguments: StartArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    init_logging(&arguments)?;
    if arguments.slots == 0 {
        return Err(UserError::new("-n must be at least 1").into());
    }
    let cache_dir = super::cache_dir(arguments.cache_dir.as_deref())?;
    python::set_import_timeout(Duration::from_secs(
        arguments.timings.import_timeout_seconds,
    ));
    let sync_timeout = Duration::from_secs(arguments.timings.sync_timeout_seconds);
    let project = match &arguments.project {
        Some(directory) => tokio::select! {
            release = project_release(directory, &cache_dir, sync_timeout) => Some(release?),
            () = super::init::interrupted() => {
                // uv runs in a process group of its own, which the interrupt did not reach.
                let stopped = tokio::task::spawn_blocking(|| {
                    python::environment::stop_running(Duration::from_secs(5))
                })
                .await
                .unwrap_or(false);
                eprintln!(
                    "error: interrupted while preparing the project{}",
                    if stopped { "" } else { "; uv did not stop within 5 s" }
                );
                return Ok(ExitCode::from(130));
            }
        },
        None => None,
    };
    let client = api.connect().await?;
    let shutdown = Shutdown::default();
    let grace = Duration::from_secs(arguments.timings.grace_seconds);
    tokio::spawn(watch_signals(shutdown.clone(), grace));
    let options = runner::Options {
        cluster: arguments.cluster.unwrap_or_default(),
        slots: arguments.slots,
        stop_when_idling: arguments.stop_when_idling,
        cache_dir,
        project,
        watch: None,
        grace,
        quiet: arguments.quiet,
        sync_timeout,
        failure_backoff_max: Duration::from_secs(arguments.failure_backoff_max_seconds),
    };
    let progress = super::progress::Display::new(api.json || arguments.quiet).lines();
    let stopped = Runner::new(options, client)
        .with_progress(progress)
        .run(shutdown)
        .await
        .map_err(|error| match error {
            runner::Error::UnknownCluster { .. } => anyhow::Error::new(UserError::with_hint(
                error.to_string(),
                "create it with `tilebox cluster create`, or pick one from `tilebox cluster list`",
            )),
            runner::Error::Project(error) => anyhow::Error::new(UserError::with_hint(
                format!("cannot load the project: {error}"),
                "debug the import with `tilebox task run <Task> --project <dir>`",
            )),
            // Exit code and hint from the client error (e.g. 1 for a wrong API key).
            runner::Error::Refused(error) => anyhow::Error::new(error),
        })?;
    tracing::info!("runner stopped");
    let code = match stopped {
        Stopped::Finished => 0,
        // As a shell reports a process ended by SIGINT.
        Stopped::HandedBack => 130,
    };
    // Everything the runner owes the server is reported or handed back. The process ends
    // here rather than by unwinding: the async runtime's teardown would wait for interpreter
    // threads still inside Python (a task that ignored the hand-back, or a non-daemon thread
    // a task left behind, which ending its interpreter waits for).
    std::process::exit(code)
}

/// How long after the second interrupt (or the end of the grace period) the process may take
/// to exit: handing back takes at most [`runner::HAND_BACK_TIMEOUT`], the rest is margin.
const EXIT_DEADLINE: Duration = Duration::from_secs(8);

/// Ends the process `deadline` from now, whatever is still running: a thread of its own, so
/// it fires even when every runtime thread is stuck (e.g. waiting for a Python thread).
fn exit_after(deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("exit-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            tracing::error!(
                deadline_seconds = deadline.as_secs(),
                "the runner did not stop in time after the second interrupt; exiting now"
            );
            // uv runs in a process group of its own: it would outlive the process.
            python::environment::stop_running(Duration::from_secs(1));
            std::process::exit(130);
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the exit deadline");
    }
}

/// First SIGINT/SIGTERM: drain (hand back after the grace period); second: hand back now.
pub(super) async fn watch_signals(shutdown: Shutdown, grace: Duration) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
    let next_signal = async |terminate: &mut tokio::signal::unix::Signal| {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    next_signal(&mut terminate).await;
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping: no new tasks; running tasks may finish (interrupt again to hand them back)"
    );
    shutdown.drain.cancel();
    tokio::select! {
        _ = next_signal(&mut terminate) => tracing::info!("handing running tasks back"),
        _ = tokio::time::sleep(grace) => tracing::warn!("the grace period ended; handing running tasks back"),
    }
    shutdown.hand_back.cancel();
    exit_after(EXIT_DEADLINE);
}

//! `tilebox runner start`: the release runner (or, with `--project`, a direct runner of a
//! local project, loaded in-process without publishing); `tilebox runner list`: the runners
//! the server sees (presence).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use serde_json::{Value, json};

use super::output::{self, Table};
use super::{ApiArgs, UserError};
use crate::api::selfhosted_v1::runner_info::Kind;
use crate::api::selfhosted_v1::{ListRunnersRequest, RunnerInfo};
use crate::python;
use crate::runner::prepare::{self, EnvironmentSource};
use crate::runner::{self, Runner, Shutdown, Stopped};
use crate::server::console::runners::runner_name;

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// Run the cluster's deployed releases (or a local project with --project).
    Start(StartArgs),
    /// List the runners connected to the server (with --all, also those gone quiet).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the runners of this cluster [default: every cluster].
    #[arg(long)]
    cluster: Option<String>,
    /// Also runners that stopped calling (listed as gone for a day).
    #[arg(long)]
    all: bool,
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
        RunnerCommand::List(arguments) => {
            list(arguments, api).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(arguments: ListArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let mut client = api.connect().await?;
    let runners = client
        .runners
        .list_runners(ListRunnersRequest {
            cluster_slug: arguments.cluster.unwrap_or_default(),
            include_gone: arguments.all,
        })
        .await
        .map_err(|status| client.error("ListRunners", status))?
        .into_inner()
        .runners;
    let now = crate::api::convert::now_millis();
    if api.json {
        return output::print_json(&Value::Array(
            runners
                .iter()
                .map(|runner| runner_document(runner, now))
                .collect(),
        ));
    }
    if runners.is_empty() {
        eprintln!(
            "{}",
            if arguments.all {
                "no runners seen in the last day"
            } else {
                "no runners connected (--all also lists those that stopped)"
            }
        );
        return Ok(());
    }
    output::print_text(&runners_table(&runners, now).render())
}

fn kind_name(runner: &RunnerInfo) -> &'static str {
    match Kind::try_from(runner.kind) {
        Ok(Kind::Tilebox) => "tilebox",
        Ok(Kind::Sdk) => "sdk",
        _ => "unknown",
    }
}

fn last_seen_millis(runner: &RunnerInfo) -> i64 {
    runner
        .last_seen
        .as_ref()
        .map_or(0, crate::api::convert::millis_from_timestamp)
}

/// A runner's advertised tasks: `name@version`, comma-separated.
fn tasks_text(runner: &RunnerInfo) -> String {
    runner
        .identifiers
        .iter()
        .map(|identifier| format!("{}@{}", identifier.name, identifier.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long ago `millis` was, for people: `3s ago`, `4m ago`, `2h ago`.
pub fn ago(now: i64, millis: i64) -> String {
    let seconds = (now - millis).max(0) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}

fn runners_table(runners: &[RunnerInfo], now: i64) -> Table {
    let mut table = Table::new(&[
        "RUNNER",
        "CLUSTER",
        "KIND",
        "SLOTS",
        "TASKS",
        "LAST CONTACT",
        "STATE",
    ]);
    for runner in runners {
        table.push(vec![
            runner_name(&runner.id, Some(&runner.hostname)),
            runner.cluster_slug.clone(),
            kind_name(runner).to_string(),
            format!(
                "{}/{}",
                runner.slots.saturating_sub(runner.free_slots),
                runner.slots
            ),
            tasks_text(runner),
            ago(now, last_seen_millis(runner)),
            state_word(runner).to_string(),
        ]);
    }
    table
}

/// `connected`; `stopped` (it said so in its last call: no slots left); or `gone` (no
/// call within the server's presence timeout).
fn state_word(runner: &RunnerInfo) -> &'static str {
    if runner.connected {
        "connected"
    } else if runner.slots == 0 {
        "stopped"
    } else {
        "gone"
    }
}

fn runner_document(runner: &RunnerInfo, now: i64) -> Value {
    json!({
        "id": runner.id,
        "name": runner_name(&runner.id, Some(&runner.hostname)),
        "cluster": runner.cluster_slug,
        "kind": kind_name(runner),
        "key": runner.key_name,
        "hostname": runner.hostname,
        "version": runner.version,
        "slots": runner.slots,
        "busy_slots": runner.slots.saturating_sub(runner.free_slots),
        "tasks": runner.identifiers.iter().map(|identifier| json!({
            "name": identifier.name,
            "version": identifier.version,
        })).collect::<Vec<_>>(),
        "first_seen": output::timestamp_json(runner.first_seen.as_ref()),
        "last_seen": output::timestamp_json(runner.last_seen.as_ref()),
        "last_contact_ms_ago": (now - last_seen_millis(runner)).max(0),
        "state": state_word(runner),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert::timestamp_from_millis;
    use crate::api::workflows_v1::TaskIdentifier;

    fn runner(id: &str, hostname: &str, connected: bool) -> RunnerInfo {
        RunnerInfo {
            id: id.to_string(),
            kind: Kind::Tilebox as i32,
            cluster_slug: "default".to_string(),
            hostname: hostname.to_string(),
            slots: 4,
            free_slots: 1,
            identifiers: vec![TaskIdentifier {
                name: "SleepTask".to_string(),
                version: "v1.0".to_string(),
            }],
            last_seen: Some(timestamp_from_millis(58_000)),
            connected,
            ..RunnerInfo::default()
        }
    }

    #[test]
    fn the_runners_table_shows_busy_slots_tasks_contact_and_state() {
        let table = runners_table(
            &[
                runner("runner:ops/0f8e2a41-aaaa", "worker-1", true),
                RunnerInfo {
                    kind: Kind::Sdk as i32,
                    slots: 1,
                    free_slots: 1,
                    identifiers: Vec::new(),
                    ..runner("host:ops@10.0.0.7:5000", "", false)
                },
            ],
            61_000,
        );
        assert_eq!(
            table.render(),
            "RUNNER             CLUSTER  KIND     SLOTS  TASKS           LAST CONTACT  STATE\n\
             worker-1·0f8e2a41  default  tilebox  3/4    SleepTask@v1.0  3s ago        connected\n\
             SDK 10.0.0.7:5000  default  sdk      0/1                    3s ago        gone"
        );
    }

    #[test]
    fn contacts_are_told_in_seconds_minutes_or_hours_ago() {
        assert_eq!(
            ago(10_000, 10_500),
            "0s ago",
            "a clock skew is not negative"
        );
        assert_eq!(ago(70_000, 10_000), "1m ago");
        assert_eq!(ago(7_300_000, 0), "2h ago");
    }
}

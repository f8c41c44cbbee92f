//! `tilebox dev [DIR]`: the inner loop in one process. The embedded server (the code of
//! `tilebox server`), its data under the project's `.tilebox/`, and a runner executing the
//! project in-process (the direct mode of `runner start --project`), which loads the project
//! again when its files change (`runner::reload`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::UserError;
use crate::python;
use crate::runner::prepare::{self, EnvironmentSource};
use crate::runner::reload::{self, Event};
use crate::runner::{self, Runner, Shutdown, Stopped};
use crate::server::{self, Server};

/// The directory `tilebox dev` keeps its state in, inside the project.
pub const STATE_DIRECTORY: &str = ".tilebox";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The project directory (`tilebox.workflow.toml` is searched upward from it).
    #[arg(default_value = ".")]
    directory: PathBuf,
    /// Address of the embedded server, `HOST:PORT` on a loopback address (it accepts every
    /// local client, without API keys); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8083", value_parser = super::server::parse_listen)]
    listen: SocketAddr,
    /// Slots: tasks run in parallel (the project is loaded into one interpreter per slot).
    #[arg(short = 'n', long = "slots", default_value_t = 2)]
    slots: usize,
    /// Cache directory for the embedded Python runtime [default: $XDG_CACHE_HOME/tilebox or
    /// ~/.cache/tilebox].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Log level of the server's and runner's own logs (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Quiet console: no task logs, only warnings and errors.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    timings: super::runner::Timings,
}

pub async fn run(arguments: DevArgs) -> anyhow::Result<ExitCode> {
    let level = if arguments.quiet {
        "warn"
    } else {
        arguments.log_level.as_str()
    };
    super::init_runner_tracing(level)?;
    if arguments.slots == 0 {
        return Err(UserError::new("-n must be at least 1").into());
    }
    if !arguments.listen.ip().to_canonical().is_loopback() {
        return Err(UserError::with_hint(
            format!(
                "refusing to listen on the non-loopback address {}: the dev server has no API keys",
                arguments.listen
            ),
            "listen on a loopback address such as 127.0.0.1:8083; to serve a network, run \
             `tilebox server` with --keys-file and `tilebox runner start --project`",
        )
        .into());
    }
    let project = prepare::project_source(&arguments.directory, None, EnvironmentSource::Existing)
        .map_err(|error| {
            UserError::caused_by(
                error,
                Some("`tilebox workflow init` creates a project; `tilebox dev DIR` runs one elsewhere"),
            )
        })?;
    let data_dir = state_directory(&project.root)?.join("data");
    let cache_dir = super::cache_dir(arguments.cache_dir.as_deref())?;
    // The embedded runtime is unpacked under it: its frames are left out of tracebacks.
    let cache_root = cache_dir.display().to_string();
    python::set_import_timeout(Duration::from_secs(
        arguments.timings.import_timeout_seconds,
    ));

    let server = Server::bind(server::Options {
        listen: arguments.listen,
        data_dir: data_dir.clone(),
        database: None,
        tokens: Vec::new(),
        keys_file: None,
        max_artifact_bytes: 1 << 30,
        telemetry_retention: Duration::from_secs(7 * 86_400),
        scheduler: server::scheduler::Options::default(),
        limits: server::Limits::default(),
        tls: None,
        console: true,
    })
    .await
    .map_err(|error| match error {
        server::Error::Bind { .. } => UserError::caused_by(
            error,
            Some("another server may be listening there; pick another port with --listen, e.g. 127.0.0.1:0 for a free one"),
        )
        .into(),
        error => anyhow::Error::new(error),
    })?;
    let address = server
        .local_addr()
        .context("cannot read the bound address")?;
    let url = format!("http://{address}");
    tracing::info!(%address, data_dir = %data_dir.display(), "tilebox dev server started");
    let stop_server = CancellationToken::new();
    let mut serving = tokio::spawn(server.serve(stop_server.clone().cancelled_owned()));
    print_lines(&where_to_look(&project.label, &project.root, &url))?;

    let client = crate::client::Client::connect(&url, None).await?;
    let (events, mut received) = mpsc::unbounded_channel();
    let grace = Duration::from_secs(arguments.timings.grace_seconds);
    let options = runner::Options {
        cluster: String::new(),
        slots: arguments.slots,
        stop_when_idling: false,
        cache_dir,
        project: None,
        watch: Some(reload::Watch {
            directory: project.root.clone(),
            interval: reload::POLL_INTERVAL,
            events,
        }),
        grace,
        quiet: arguments.quiet,
        sync_timeout: Duration::from_secs(arguments.timings.sync_timeout_seconds),
        failure_backoff_max: runner::FAILURE_BACKOFF_MAX,
    };
    let shutdown = Shutdown::default();
    tokio::spawn(super::runner::watch_signals(shutdown.clone(), grace));
    let mut running = tokio::spawn(Runner::new(options, client).run(shutdown.clone()));
    let stopped = loop {
        tokio::select! {
            Some(event) = received.recv() => report(&event, &project.root, &cache_root)?,
            stopped = &mut running => break stopped,
            served = &mut serving => {
                // The server ended on its own: nothing can claim or report any more.
                shutdown.hand_back.cancel();
                let _ = running.await;
                served.context("the embedded server panicked")??;
                anyhow::bail!("the embedded server stopped");
            }
        }
    };
    // The runner has reported (or handed back) every task it took: the server may stop.
    stop_server.cancel();
    serving.await.context("the embedded server panicked")??;
    let stopped = stopped
        .context("the runner panicked")?
        .map_err(|error| anyhow::Error::new(error).context("the runner stopped"))?;
    tracing::info!("tilebox dev stopped");
    let code = match stopped {
        Stopped::Finished => 0,
        Stopped::HandedBack => 130,
    };
    // As `runner start` does: the interpreters' threads are not waited for by the runtime's
    // teardown (a task may have left a thread behind).
    std::process::exit(code)
}

/// `.tilebox/` in the project root, created with a `.gitignore` that ignores all of it (as
/// uv does for `.venv/`), so the project's own ignore rules need no change.
fn state_directory(root: &Path) -> anyhow::Result<PathBuf> {
    let directory = root.join(STATE_DIRECTORY);
    fs_err::create_dir_all(&directory)?;
    let ignore = directory.join(".gitignore");
    if !ignore.exists() {
        fs_err::write(
            &ignore,
            "# created by `tilebox dev`: its server's data\n*\n",
        )?;
    }
    Ok(directory)
}

/// What `tilebox dev` prints once its server listens: where to look. The one place for
/// every address it serves (the console's goes here once it exists).
fn where_to_look(label: &str, root: &Path, url: &str) -> Vec<String> {
    vec![
        format!("tilebox dev: {label} ({})", root.display()),
        format!("API      {url}"),
        format!("Console  {url}/jobs"),
        format!("SDK      export TILEBOX_API_URL={url}"),
    ]
}

fn print_lines(lines: &[String]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}").context("cannot write to stdout")?;
    }
    stdout.flush().context("cannot write to stdout")
}

/// `name@version, ...` of `tasks`.
fn task_list(tasks: &[(String, String)]) -> String {
    tasks
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line on stdout per load; a failure, with its traceback, and the start of a `uv sync`
/// (which can take minutes) on stderr.
fn report(event: &Event, root: &Path, cache: &str) -> anyhow::Result<()> {
    match event {
        Event::Syncing => {
            let mut stderr = std::io::stderr().lock();
            writeln!(stderr, "syncing the environment with uv…").context("cannot write to stderr")
        }
        Event::Loaded {
            tasks,
            synced,
            first: true,
            ..
        } => print_lines(&[
            format!("tasks    {}", task_list(tasks)),
            format!(
                "ready: {} task{}{}; watching {} for changes (Ctrl-C stops)",
                tasks.len(),
                if tasks.len() == 1 { "" } else { "s" },
                if *synced { ", environment synced" } else { "" },
                root.display()
            ),
        ]),
        Event::Loaded {
            tasks,
            synced,
            first: false,
            ..
        } => print_lines(&[format!(
            "reloaded: {} task{} ({}){}",
            tasks.len(),
            if tasks.len() == 1 { "" } else { "s" },
            task_list(tasks),
            if *synced { ", environment synced" } else { "" }
        )]),
        Event::Failed { error, first } => {
            let mut message = format!("error: cannot load the project: {error}");
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            if let Some(traceback) = traceback_of(error) {
                message.push('\n');
                message.push_str(without_machinery(traceback, cache).trim_end());
            }
            let hint = if *first {
                "hint: no code is loaded yet; save a fix to load it"
            } else {
                "hint: still running the last good code; save a fix to reload"
            };
            // One write, not four: stderr is unbuffered, and other threads' lines could come
            // between the error and its hint.
            std::io::stderr()
                .write_all(format!("{message}\n{hint}\n").as_bytes())
                .context("cannot write to stderr")
        }
    }
}

/// `traceback` without the frames of the machinery between the runner and the project's
/// code (CPython's import system, the runtime unpacked under `cache`), so what is left starts
/// at the project's own file and line.
fn without_machinery(traceback: &str, cache: &str) -> String {
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in traceback.lines() {
        if let Some(rest) = line.strip_prefix("  File \"") {
            let file = rest.split('"').next().unwrap_or_default();
            skipping = file.starts_with("<frozen ")
                || file.ends_with("/importlib/__init__.py")
                || (!cache.is_empty() && file.starts_with(cache));
        } else if !line.starts_with("    ") {
            skipping = false;
        }
        if !skipping {
            kept.push(line);
        }
    }
    kept.join("\n")
}

/// The Python traceback of a load that raised, which names the file and line.
fn traceback_of(error: &reload::Error) -> Option<&str> {
    match error {
        reload::Error::Prepare(prepare::Error::Python(python::Error::Load { error, .. })) => {
            Some(error.traceback.as_str()).filter(|traceback| !traceback.is_empty())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracebacks_keep_the_project_frames_and_the_exception() {
        let traceback = "Traceback (most recent call last):\n  File \"/cache/tilebox/runtime/1/tilebox/workflows/_host.py\", line 94, in load\n    runner = _import_object(object_path)\n  File \"/usr/lib/python3.13/importlib/__init__.py\", line 88, in import_module\n    return _bootstrap._gcd_import(name[level:], package, level)\n           ~~~~~~^^^^\n  File \"<frozen importlib._bootstrap>\", line 1387, in _gcd_import\n  File \"/project/app.py\", line 3\n    def oops(:\n             ^\nSyntaxError: invalid syntax";
        assert_eq!(
            without_machinery(traceback, "/cache/tilebox"),
            "Traceback (most recent call last):\n  File \"/project/app.py\", line 3\n    def oops(:\n             ^\nSyntaxError: invalid syntax"
        );
    }
}

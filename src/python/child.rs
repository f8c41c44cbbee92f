//! The child-process host: a `tilebox python-host` process that hosts one release in its
//! main interpreter and speaks JSON lines over its stdin/stdout. The parent side
//! ([`ChildHost`]) restarts it after a crash, so a segfault in a C extension fails one task
//! instead of the runner.
//!
//! A batch of tasks is one `execute` line with all the requests. The child runs them in
//! order and writes each task's events while it runs, then its outcome as soon as it ends, so
//! the outcomes of the tasks before a crash are already in the pipe when the child dies.
//!
//! The child moves its stdout to a private descriptor before Python starts and points
//! descriptor 1 at stderr, so `print` in task code cannot corrupt the protocol.

use std::io::{BufRead, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use pyo3::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::interpreter::{self, Batch, EventSender, SinkSlot};
use super::protocol::{Event, Exception, TaskOutcome, TaskRequest};
use super::{Error, Release};

/// Parent -> child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToChild {
    /// Run these tasks in order.
    Execute { requests: Vec<TaskRequest> },
    /// Encode a task input given by hand (`interpreter::encode_input`).
    EncodeInput {
        name: String,
        version: String,
        text: String,
    },
}

/// Child -> parent. While a batch runs: for each task in order, its events, then its outcome.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum FromChild {
    Loaded {
        identifiers: Vec<(String, String)>,
        /// The classes that registered `identifiers`, in the same order.
        #[serde(default)]
        classes: Vec<String>,
    },
    LoadError {
        error: Exception,
    },
    Event {
        event: Event,
    },
    Outcome {
        outcome: TaskOutcome,
    },
    /// The answer to `EncodeInput`.
    Encoded {
        result: Result<Vec<u8>, Exception>,
    },
}

/// The `tilebox` binary that hosts children.
pub(super) fn host_binary() -> Result<PathBuf, std::io::Error> {
    match std::env::var_os(crate::env::PYTHON_HOST) {
        Some(path) => Ok(PathBuf::from(path)),
        None => std::env::current_exe(),
    }
}

/// The arguments of `tilebox python-host` for a release.
pub(super) fn host_arguments(release: &Release) -> Vec<String> {
    let mut arguments = vec![
        "python-host".to_string(),
        "--label".to_string(),
        release.label.clone(),
        "--runtime".to_string(),
        release.runtime.to_string_lossy().into_owned(),
        "--root".to_string(),
        release.root.to_string_lossy().into_owned(),
        "--runner".to_string(),
        release.runner.clone(),
    ];
    for site in &release.site_packages {
        arguments.push("--site".to_string());
        arguments.push(site.to_string_lossy().into_owned());
    }
    if let Some(venv) = &release.venv {
        arguments.push("--venv".to_string());
        arguments.push(venv.to_string_lossy().into_owned());
    }
    if super::post_mortem() {
        arguments.push("--post-mortem".to_string());
    }
    if super::terminal() {
        arguments.push("--terminal".to_string());
    }
    arguments.push("--parent".to_string());
    arguments.push(std::process::id().to_string());
    arguments
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// A release hosted in a child process; one task at a time.
pub struct ChildHost {
    release: Release,
    identifiers: Vec<(String, String)>,
    classes: Vec<String>,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl ChildHost {
    /// Starts the child and loads the release in it.
    pub async fn start(release: Release) -> Result<Self, Error> {
        let (running, (identifiers, classes)) = spawn(&release).await?;
        Ok(Self {
            release,
            identifiers,
            classes,
            running: tokio::sync::Mutex::new(Some(running)),
        })
    }

    pub fn identifiers(&self) -> &[(String, String)] {
        &self.identifiers
    }

    /// The classes that registered [`Self::identifiers`], in the same order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Executes the tasks in the child, in order, each task's events going to its own
    /// sender. If the child dies running a task, that task fails (a workflow error: its code
    /// crashed the process), the tasks after it come back as [`Error::NotRun`], and the next
    /// call starts a new child; so does a call that finds the child ended while idle.
    pub async fn execute_batch(&self, batch: Batch) -> Vec<Result<TaskOutcome, Error>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let (requests, senders): (Vec<TaskRequest>, Vec<_>) = batch.into_iter().unzip();
        let tasks: Vec<(String, String)> = requests
            .iter()
            .map(|request| (request.id.clone(), request.display.clone()))
            .collect();
        let mut guard = self.running.lock().await;
        // The child is out of its slot while the batch runs: if this future is dropped
        // halfway, so is the child (killed on drop), instead of leaving the rest of its
        // outcomes in the pipe for the next call to read as its own.
        let idle = match guard.take() {
            // A child that ended while idle (killed from outside, e.g. by the OOM killer or
            // an operator) is buried and replaced before the batch goes out: none of these
            // tasks took it down, so none of them fails for it.
            Some(mut running) => match running.child.try_wait() {
                Ok(None) => Some(running),
                Ok(Some(_)) | Err(_) => {
                    self.bury(running, "it ended while idle".into()).await;
                    None
                }
            },
            None => None,
        };
        let mut running = match idle {
            Some(running) => running,
            None => match spawn(&self.release).await {
                Ok((running, _)) => running,
                Err(error) => return not_run(error, &tasks),
            },
        };
        if let Err(message) = send_batch(&mut running, requests).await {
            let reason = self.bury(running, message).await;
            let error = Error::Child {
                release: self.release.label.clone(),
                message: format!("it died before the batch started: {reason}"),
            };
            return not_run(error, &tasks);
        }
        let mut results = Vec::with_capacity(tasks.len());
        for (events, (task_id, display)) in senders.iter().zip(&tasks) {
            match receive_outcome(&mut running, events).await {
                Ok(outcome) => results.push(Ok(outcome)),
                Err(message) => {
                    let reason = self.bury(running, message).await;
                    results.push(Ok(crashed(display, &reason)));
                    let reason = format!(
                        "the child process hosting {} died running task {task_id} before it: {reason}",
                        self.release.label
                    );
                    results.extend(tasks[results.len()..].iter().map(|(task, _)| {
                        Err(Error::NotRun {
                            task: task.clone(),
                            reason: reason.clone(),
                        })
                    }));
                    return results;
                }
            }
        }
        *guard = Some(running);
        results
    }

    /// The input bytes for a task input given by hand (see `interpreter::encode_input`), from
    /// the child (started again first if it is gone).
    pub async fn encode_input(
        &self,
        name: &str,
        version: &str,
        text: &str,
    ) -> Result<Result<Vec<u8>, Exception>, Error> {
        let mut guard = self.running.lock().await;
        let mut running = match guard.take() {
            Some(running) => running,
            None => spawn(&self.release).await?.0,
        };
        let request = ToChild::EncodeInput {
            name: name.to_string(),
            version: version.to_string(),
            text: text.to_string(),
        };
        let answer = match send_line(&mut running, &request).await {
            Ok(()) => running
                .stdout
                .next_line()
                .await
                .map_err(|error| error.to_string()),
            Err(message) => Err(message),
        };
        let message = match answer {
            Ok(Some(line)) => match serde_json::from_str::<FromChild>(&line) {
                Ok(FromChild::Encoded { result }) => {
                    *guard = Some(running);
                    return Ok(result);
                }
                _ => format!("unexpected answer to encoding an input: {line}"),
            },
            Ok(None) => "the child closed its output".to_string(),
            Err(message) => message,
        };
        let reason = self.bury(running, message).await;
        Err(Error::Child {
            release: self.release.label.clone(),
            message: reason,
        })
    }

    /// Kills and reaps a child whose pipe failed with `message`; answers why it ended.
    async fn bury(&self, mut dead: Running, message: String) -> String {
        let _ = dead.child.start_kill();
        let reason = match dead.child.wait().await {
            Ok(status) => describe_exit(status),
            Err(_) => message,
        };
        tracing::warn!(release = %self.release.label, %reason, "the child process hosting the release died");
        reason
    }

    /// Closes the child's stdin (it exits after the current task) and waits for it.
    pub async fn stop(self) {
        if let Some(running) = self.running.into_inner() {
            let Running {
                mut child, stdin, ..
            } = running;
            drop(stdin);
            let _ = child.wait().await;
        }
    }
}

/// The outcome of a task whose code took its child process down.
fn crashed(display: &str, reason: &str) -> TaskOutcome {
    TaskOutcome::Failed {
        display: crate::api::convert::failure_display(
            display,
            &format!("WorkerCrashed({reason:?})"),
        ),
        workflow_error: true,
        progress: Vec::new(),
        error: Some(Exception {
            kind: "WorkerCrashed".into(),
            message: reason.to_string(),
            traceback: String::new(),
        }),
    }
}

/// `error` for the first task (as a single `execute` would answer it) and [`Error::NotRun`]
/// with its text for the others.
fn not_run(error: Error, tasks: &[(String, String)]) -> Vec<Result<TaskOutcome, Error>> {
    let reason = error.to_string();
    let mut results = vec![Err(error)];
    results.extend(tasks.iter().skip(1).map(|(task, _)| {
        Err(Error::NotRun {
            task: task.clone(),
            reason: reason.clone(),
        })
    }));
    results
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(signal)) => format!("the process hosting the task was killed by signal {signal}"),
        (Some(code), _) => format!("the process hosting the task exited with status {code}"),
        _ => "the process hosting the task ended".to_string(),
    }
}

async fn spawn(release: &Release) -> Result<(Running, interpreter::Registered), Error> {
    let failed = |message: String| Error::Child {
        release: release.label.clone(),
        message,
    };
    let binary = host_binary()
        .map_err(|error| failed(format!("cannot find the tilebox binary: {error}")))?;
    let mut child = tokio::process::Command::new(&binary)
        .args(host_arguments(release))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| failed(format!("cannot start {}: {error}", binary.display())))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| failed("no stdin pipe".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("no stdout pipe".into()))?;
    let mut stdout = BufReader::new(stdout).lines();
    // A release that hangs at import never answers: past the timeout the child is killed
    // (it is dropped, `kill_on_drop`).
    let timeout = super::import_timeout();
    let first = tokio::time::timeout(timeout, stdout.next_line())
        .await
        .map_err(|_| Error::ImportTimedOut {
            release: release.label.clone(),
            timeout,
        })?
        .map_err(|error| failed(format!("cannot read from the child: {error}")))?;
    let Some(line) = first else {
        let status = child.wait().await.map(describe_exit).unwrap_or_default();
        return Err(failed(format!(
            "it exited before loading the release ({status})"
        )));
    };
    match serde_json::from_str::<FromChild>(&line) {
        Ok(FromChild::Loaded {
            identifiers,
            classes,
        }) => Ok((
            Running {
                child,
                stdin,
                stdout,
            },
            (identifiers, classes),
        )),
        Ok(FromChild::LoadError { error }) => Err(Error::Load {
            release: release.label.clone(),
            runner: release.runner.clone(),
            error,
        }),
        _ => Err(failed(format!("unexpected first message: {line}"))),
    }
}

async fn send_batch(running: &mut Running, requests: Vec<TaskRequest>) -> Result<(), String> {
    send_line(running, &ToChild::Execute { requests }).await
}

async fn send_line(running: &mut Running, message: &ToChild) -> Result<(), String> {
    let mut line = serde_json::to_string(message).map_err(|error| error.to_string())?;
    line.push('\n');
    running
        .stdin
        .write_all(line.as_bytes())
        .await
        .map_err(|error| error.to_string())?;
    running
        .stdin
        .flush()
        .await
        .map_err(|error| error.to_string())
}

/// Reads the running task's events (to `events`) up to its outcome.
async fn receive_outcome(
    running: &mut Running,
    events: &EventSender,
) -> Result<TaskOutcome, String> {
    loop {
        let Some(line) = running
            .stdout
            .next_line()
            .await
            .map_err(|error| error.to_string())?
        else {
            return Err("the child closed its output".into());
        };
        match serde_json::from_str::<FromChild>(&line) {
            Ok(FromChild::Event { event }) => {
                let _ = events.send(event);
            }
            Ok(FromChild::Outcome { outcome }) => return Ok(outcome),
            Ok(other) => return Err(format!("unexpected message {other:?}")),
            Err(error) => return Err(format!("undecodable message from the child: {error}")),
        }
    }
}

/// Ends this host as soon as the process that started it is gone, even killed with SIGKILL
/// (which runs none of its clean-up): a host hung in an import or a task would otherwise run on
/// as an orphan, next to the runner that takes its task over. A Rust thread polls the parent
/// pid (it becomes the reaper's when the parent dies); it needs no GIL, so a host stuck in
/// Python ends too.
fn exit_with_parent(expected: Option<u32>) {
    // The starter's pid when it said it: a starter killed between this host's start and this
    // line has already left it to another parent, which is then the one found here.
    let parent = expected.unwrap_or_else(std::os::unix::process::parent_id);
    let _ = std::thread::Builder::new()
        .name("parent-watch".to_string())
        .spawn(move || {
            loop {
                if std::os::unix::process::parent_id() != parent {
                    // SAFETY: `_exit` ends the process at once, running no handlers; nothing
                    // of this process is used after it.
                    unsafe { libc::_exit(3) };
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
}

/// Arguments of the hidden `tilebox python-host` command.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    #[arg(long)]
    pub label: String,
    #[arg(long)]
    pub runtime: PathBuf,
    #[arg(long)]
    pub root: PathBuf,
    #[arg(long)]
    pub runner: String,
    #[arg(long = "site")]
    pub site_packages: Vec<PathBuf>,
    #[arg(long)]
    pub venv: Option<PathBuf>,
    /// Stop tasks that raise in `pdb.post_mortem` (`task run --pdb`).
    #[arg(long)]
    pub post_mortem: bool,
    /// Give Python the terminal (`/dev/tty`) as `sys.stdin` and `sys.stdout`, for debuggers.
    #[arg(long)]
    pub terminal: bool,
    /// Probe instead of serving: load the release in this many isolated sub-interpreters at
    /// once, report, and exit.
    #[arg(long)]
    pub probe: Option<usize>,
    /// The process that started this host: it ends when that one has, even one that was
    /// gone before this host got to look.
    #[arg(long)]
    pub parent: Option<u32>,
}

impl HostArgs {
    fn release(&self) -> Release {
        Release {
            label: self.label.clone(),
            runtime: self.runtime.clone(),
            root: self.root.clone(),
            site_packages: self.site_packages.clone(),
            venv: self.venv.clone(),
            runner: self.runner.clone(),
        }
    }
}

/// Writes protocol lines to the private descriptor, from any thread.
type Output = Arc<Mutex<std::io::BufWriter<std::fs::File>>>;

fn send(output: &Output, message: &FromChild) {
    if let Ok(mut writer) = output.lock()
        && let Ok(line) = serde_json::to_string(message)
    {
        let _ = writeln!(writer, "{line}");
        let _ = writer.flush();
    }
}

/// Moves stdout to a private descriptor and points descriptor 1 at stderr.
fn take_stdout() -> std::io::Result<std::fs::File> {
    // SAFETY: plain descriptor duplication on descriptors this process owns.
    unsafe {
        let private = libc::dup(1);
        if private < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(private))
    }
}

/// Runs the child side: load, then execute requests until stdin closes.
pub fn serve(arguments: HostArgs) -> ExitCode {
    exit_with_parent(arguments.parent);
    let output: Output = match take_stdout() {
        Ok(file) => Arc::new(Mutex::new(std::io::BufWriter::new(file))),
        Err(error) => {
            eprintln!("error: cannot set up the protocol pipe: {error}");
            return ExitCode::from(2);
        }
    };
    let release = arguments.release();
    if let Some(count) = arguments.probe {
        return probe_here(&release, count, &output);
    }
    if let Err(error) = super::host::initialize() {
        send(
            &output,
            &FromChild::LoadError {
                error: Exception {
                    kind: "InitializationError".into(),
                    message: error.to_string(),
                    traceback: String::new(),
                },
            },
        );
        return ExitCode::from(2);
    }
    let slot: SinkSlot = Arc::new(Mutex::new(None));
    let loaded = Python::attach(|py| -> Result<_, Exception> {
        let convert = |error: PyErr| interpreter::python_error(py, &error);
        interpreter::set_up_paths(py, &release).map_err(convert)?;
        interpreter::install_sink(py, slot.clone()).map_err(convert)?;
        set_up_stdio(py, arguments.terminal).map_err(convert)?;
        if arguments.post_mortem {
            interpreter::set_post_mortem(py, true).map_err(convert)?;
        }
        let identifiers = interpreter::load_runner(py, &release.runner).map_err(convert)?;
        Ok((identifiers, interpreter::Entry::new(py).map_err(convert)?))
    });
    let entry = match loaded {
        Ok(((identifiers, classes), entry)) => {
            send(
                &output,
                &FromChild::Loaded {
                    identifiers,
                    classes,
                },
            );
            // Dropped explicitly while attached below; leaked if a panic unwinds first.
            std::mem::ManuallyDrop::new(entry)
        }
        Err(error) => {
            send(&output, &FromChild::LoadError { error });
            return ExitCode::from(1);
        }
    };
    {
        let output = output.clone();
        if let Ok(mut guard) = slot.lock() {
            *guard = Some(Box::new(move |event| {
                send(&output, &FromChild::Event { event })
            }));
        }
    }
    let code = serve_batches(&entry, &output);
    Python::attach(|_| drop(std::mem::ManuallyDrop::into_inner(entry)));
    code
}

/// Python's `sys.stdin` is never the protocol pipe (a task calling `input()` or
/// `breakpoint()` would read requests, or steal them into its buffer): with `terminal` it and
/// `sys.stdout` are the controlling terminal, `/dev/tty`, if there is one; otherwise
/// `sys.stdin` is `/dev/null` (`sys.stdout` is stderr's descriptor already, see
/// `take_stdout`).
fn set_up_stdio(py: Python<'_>, terminal: bool) -> PyResult<()> {
    let globals = pyo3::types::PyDict::new(py);
    globals.set_item("terminal", terminal)?;
    py.run(
        c"import os, sys
sys.stdin = open(os.devnull, encoding='utf-8')
if terminal:
    try:
        stdin = open('/dev/tty', encoding='utf-8')
        stdout = open('/dev/tty', 'w', encoding='utf-8', buffering=1)
    except OSError:
        pass
    else:
        sys.stdin, sys.stdout = stdin, stdout
",
        Some(&globals),
        None,
    )
}

/// Executes the batches read from stdin until it closes; every outcome is written (and
/// flushed) as soon as its task ends.
fn serve_batches(entry: &interpreter::Entry, output: &Output) -> ExitCode {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let requests = match serde_json::from_str::<ToChild>(&line) {
            Ok(ToChild::Execute { requests }) => requests,
            Ok(ToChild::EncodeInput {
                name,
                version,
                text,
            }) => {
                let result =
                    Python::attach(|py| interpreter::encode_input(py, &name, &version, &text));
                send(output, &FromChild::Encoded { result });
                continue;
            }
            Err(error) => {
                eprintln!("error: undecodable request: {error}");
                return ExitCode::from(2);
            }
        };
        Python::attach(|py| {
            for request in &requests {
                let outcome = entry.execute(py, request);
                send(output, &FromChild::Outcome { outcome });
            }
        });
    }
    ExitCode::SUCCESS
}

/// The probe: `count` isolated sub-interpreters load the release at the same time.
fn probe_here(release: &Release, count: usize, output: &Output) -> ExitCode {
    let (results, received) = mpsc::channel();
    let barrier = Arc::new(std::sync::Barrier::new(count.max(1)));
    let handles: Vec<_> = (0..count.max(1))
        .map(|_| {
            let release = release.clone();
            let results = results.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let started = interpreter::SubInterpreter::start(&release);
                // Keep every interpreter alive until all loaded.
                barrier.wait();
                let identifiers = started
                    .as_ref()
                    .map(|sub| (sub.identifiers().to_vec(), sub.classes().to_vec()));
                let _ = results.send(identifiers.map_err(|error| error.to_string()));
                if let Ok(sub) = started {
                    sub.stop();
                }
            })
        })
        .collect();
    drop(results);
    let mut identifiers = None;
    let mut failure = None;
    for result in received {
        match result {
            Ok(found) => identifiers = Some(found),
            Err(error) => failure = Some(error),
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    match (failure, identifiers) {
        (None, Some((identifiers, classes))) => {
            send(
                output,
                &FromChild::Loaded {
                    identifiers,
                    classes,
                },
            );
            ExitCode::SUCCESS
        }
        (failure, _) => {
            let message = failure.unwrap_or_else(|| "no interpreter loaded the release".into());
            send(
                output,
                &FromChild::LoadError {
                    error: Exception {
                        kind: "ProbeFailed".into(),
                        message,
                        traceback: String::new(),
                    },
                },
            );
            ExitCode::from(3)
        }
    }
}

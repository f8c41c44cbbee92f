//! The only module that uses pyo3: CPython embedded in the `tilebox` process, each release
//! in its own interpreter, tasks executed by direct calls.
//!
//! A release is placed in one of two ways, decided by a probe (`probe.rs`) that imports it in
//! a throwaway child process first:
//! - **sub-interpreter**: an own-GIL sub-interpreter on its own thread in this process
//!   (pure-Python releases; several run in parallel on different cores);
//! - **child process**: the main interpreter of a child `tilebox` process (releases whose
//!   C extensions refuse sub-interpreters, e.g. numpy, msgspec, pydantic-core), so a crash
//!   in them never takes this process down.
//!
//! Callers see the same API either way: [`load`] gives a [`LoadedRelease`] that lists the
//! task identifiers and executes tasks, one at a time or several in one handoff
//! ([`LoadedRelease::execute_batch`], which is what makes a call cheap: the thread wake-ups
//! or pipe round trip are paid once per batch). Python exceptions come out as [`Exception`]
//! values.
//!
//! Layout:
//! - `mod.rs`: `Release`, `Placement`, `LoadedRelease`, `Error`, the import timeout
//! - `host.rs`: initialising CPython for the process
//! - `interpreter.rs`: sub-interpreters and the code that runs in any interpreter
//! - `child.rs`: the child-process host (both ends of its pipe)
//! - `probe.rs`: deciding the placement
//! - `protocol.rs`: the plain data that crosses in and out
//! - `runtime.rs`: the embedded `tilebox.workflows` runtime
//! - `environment.rs`: `uv sync` of a project against the embedded interpreter
//! - `uv.rs`: finding a uv that runs (`PATH`, the embedded interpreter's `-m uv` or scripts)

pub mod child;
pub mod environment;
pub mod host;
mod interpreter;
pub mod probe;
pub mod protocol;
pub mod runtime;
pub mod uv;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use crate::api::convert::failure_display;
pub use interpreter::{Batch, EventSender};
pub use protocol::{Event, Exception, JobInfo, Progress, Submissions, TaskOutcome, TaskRequest};

/// What can go wrong hosting Python.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Initialize(String),
    #[error("cannot start an interpreter thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot load runner `{runner}` of {release}: {error}")]
    Load {
        release: String,
        runner: String,
        error: Exception,
    },
    #[error("the interpreter hosting the release has stopped")]
    InterpreterGone,
    #[error("cannot unpack the Python runtime to {path}")]
    Runtime {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("child process hosting {release}: {message}")]
    Child { release: String, message: String },
    /// A task of a batch that never started because its host failed first (e.g. the child
    /// process died running an earlier task); it can be handed back and retried.
    #[error("task {task} was not run: {reason}")]
    NotRun { task: String, reason: String },
    /// Loading the release (importing its runner object) did not finish in time; whatever
    /// was importing it was killed (a child process) or abandoned (a sub-interpreter thread).
    #[error("loading {release} did not finish within {} s (its import hangs or is too slow)", timeout.as_secs_f64())]
    ImportTimedOut { release: String, timeout: Duration },
}

/// How long loading a release may take by default: each of the placement probe, a child
/// host's start and a sub-interpreter's start (see [`set_import_timeout`]).
pub const DEFAULT_IMPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// The import timeout in milliseconds; process-wide like the interpreter itself.
static IMPORT_TIMEOUT_MILLIS: AtomicU64 = AtomicU64::new(60_000);

/// Sets how long each step of loading a release may take in this process (the probe, a
/// child host's start, a sub-interpreter's start). A module that sleeps at import is then
/// skipped instead of hanging its caller. Process-wide, as CPython is: set once at start
/// (`runner start --import-timeout-seconds`).
pub fn set_import_timeout(timeout: Duration) {
    let millis = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    IMPORT_TIMEOUT_MILLIS.store(millis, Ordering::Relaxed);
}

/// The import timeout in force (see [`set_import_timeout`]).
pub fn import_timeout() -> Duration {
    Duration::from_millis(IMPORT_TIMEOUT_MILLIS.load(Ordering::Relaxed))
}

/// Whether tasks that raise stop in the post-mortem debugger (`task run --pdb`).
static POST_MORTEM: AtomicBool = AtomicBool::new(false);
/// Whether releases may use this process's terminal (`task run`: `breakpoint()`, `--pdb`).
static TERMINAL: AtomicBool = AtomicBool::new(false);

/// Makes a task that raises stop in `pdb.post_mortem` at its failing frame before its failure
/// is reported, in every release loaded after this call (`tilebox task run --pdb`).
/// Process-wide, like [`set_import_timeout`].
pub fn set_post_mortem(post_mortem: bool) {
    POST_MORTEM.store(post_mortem, Ordering::Relaxed);
}

fn post_mortem() -> bool {
    POST_MORTEM.load(Ordering::Relaxed)
}

/// Gives releases loaded after this call this process's terminal for debuggers: a
/// sub-interpreter shares the process's descriptors anyway; a child-process host, whose
/// standard input and output are its protocol pipe, points Python's `sys.stdin` and
/// `sys.stdout` at `/dev/tty` (without this, at `/dev/null` and stderr). For `tilebox task
/// run`, never for a runner serving a server.
pub fn set_terminal(terminal: bool) {
    TERMINAL.store(terminal, Ordering::Relaxed);
}

fn terminal() -> bool {
    TERMINAL.load(Ordering::Relaxed)
}

/// A release to host: where its code and environment are, and which object to load.
#[derive(Debug, Clone)]
pub struct Release {
    /// A short name for messages and thread names (e.g. the workflow slug).
    pub label: String,
    /// Directory of the unpacked runtime (`runtime::unpack`), first on `sys.path`.
    pub runtime: PathBuf,
    /// The release's root directory, second on `sys.path`.
    pub root: PathBuf,
    /// The venv's site-packages directories, added with `site.addsitedir`.
    pub site_packages: Vec<PathBuf>,
    /// The venv itself (becomes `sys.prefix`), if there is one.
    pub venv: Option<PathBuf>,
    /// The runner object, `module:object`.
    pub runner: String,
}

/// Where a release runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Probe, then pick.
    Auto,
    SubInterpreter,
    ChildProcess,
}

/// How a loaded release is hosted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    SubInterpreter,
    ChildProcess,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Isolation::SubInterpreter => "sub-interpreter",
            Isolation::ChildProcess => "child process",
        })
    }
}

enum Hosted {
    Sub(interpreter::SubInterpreter),
    Child(Box<child::ChildHost>),
}

/// A release loaded and ready to execute tasks.
pub struct LoadedRelease {
    hosted: Hosted,
    /// Why the release is not in a sub-interpreter, when it is not.
    pub fallback_reason: Option<String>,
}

/// Loads a release where `placement` says (probing first for `Auto`).
pub async fn load(release: Release, placement: Placement) -> Result<LoadedRelease, Error> {
    let (isolation, fallback_reason) = match placement {
        Placement::SubInterpreter => (Isolation::SubInterpreter, None),
        Placement::ChildProcess => (Isolation::ChildProcess, None),
        Placement::Auto => match probe::probe(&release).await {
            probe::Verdict::SubInterpreter => (Isolation::SubInterpreter, None),
            probe::Verdict::ChildProcess { reason } => (Isolation::ChildProcess, Some(reason)),
        },
    };
    let hosted = match isolation {
        Isolation::SubInterpreter => Hosted::Sub(start_sub_interpreter(release).await?),
        Isolation::ChildProcess => Hosted::Child(Box::new(child::ChildHost::start(release).await?)),
    };
    Ok(LoadedRelease {
        hosted,
        fallback_reason,
    })
}

/// Starts a sub-interpreter with `release` loaded, within the import timeout. A thread
/// running Python cannot be killed: past the timeout it is abandoned (a plain thread, not the
/// runtime's blocking pool, so it never holds up the process's exit) and its interpreter is
/// stopped if its import ever ends. The probe imported the same code in a child process
/// first, so this is reached only by an import that hangs in this process alone.
async fn start_sub_interpreter(release: Release) -> Result<interpreter::SubInterpreter, Error> {
    let timeout = import_timeout();
    let label = release.label.clone();
    let (sender, started) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("load-{label}"))
        .spawn(move || {
            // If the caller gave up, the interpreter comes back and is stopped here.
            let _ = sender.send(interpreter::SubInterpreter::start(&release));
        })
        .map_err(Error::Thread)?;
    match tokio::time::timeout(timeout, started).await {
        Ok(started) => started.map_err(|_| Error::InterpreterGone)?,
        Err(_) => Err(Error::ImportTimedOut {
            release: label,
            timeout,
        }),
    }
}

impl LoadedRelease {
    pub fn isolation(&self) -> Isolation {
        match self.hosted {
            Hosted::Sub(_) => Isolation::SubInterpreter,
            Hosted::Child(_) => Isolation::ChildProcess,
        }
    }

    /// The task identifiers the runner object registered, in registration order.
    pub fn identifiers(&self) -> &[(String, String)] {
        match &self.hosted {
            Hosted::Sub(sub) => sub.identifiers(),
            Hosted::Child(child) => child.identifiers(),
        }
    }

    /// The classes (`module.QualName`) that registered [`Self::identifiers`], in the same
    /// order.
    pub fn classes(&self) -> &[String] {
        match &self.hosted {
            Hosted::Sub(sub) => sub.classes(),
            Hosted::Child(child) => child.classes(),
        }
    }

    /// Executes a task; log and progress events go to `events` while it runs.
    pub async fn execute(
        &self,
        request: TaskRequest,
        events: EventSender,
    ) -> Result<TaskOutcome, Error> {
        self.execute_batch(vec![(request, events)])
            .await
            .pop()
            .unwrap_or(Err(Error::InterpreterGone))
    }

    /// Executes several tasks in one handoff, one after the other, in order. Each task's
    /// log and progress events go to its own sender while it runs, and each gets its own
    /// result, in the order given: one task's failure (even a `BaseException`) does not touch
    /// the others. If a child process dies running a task, that task fails (a workflow
    /// error, as with [`execute`](Self::execute)), the tasks after it come back as
    /// [`Error::NotRun`] to be handed back, and the next call starts a new child.
    pub async fn execute_batch(&self, batch: Batch) -> Vec<Result<TaskOutcome, Error>> {
        match &self.hosted {
            Hosted::Sub(sub) => sub.execute_batch(batch).await,
            Hosted::Child(child) => child.execute_batch(batch).await,
        }
    }

    /// The input bytes the SDK would submit for task `(name, version)` given by hand as JSON
    /// `text` (an object of its fields, or a one-field task's wire form). The inner error is
    /// the runtime's, saying which fields do not fit.
    pub async fn encode_input(
        &self,
        name: &str,
        version: &str,
        text: &str,
    ) -> Result<Result<Vec<u8>, Exception>, Error> {
        match &self.hosted {
            Hosted::Sub(sub) => sub.encode_input(name, version, text).await,
            Hosted::Child(child) => child.encode_input(name, version, text).await,
        }
    }

    /// Unloads the release once its running task (if any) finished.
    pub async fn unload(self) {
        match self.hosted {
            Hosted::Sub(sub) => {
                let _ = tokio::task::spawn_blocking(move || sub.stop()).await;
            }
            Hosted::Child(child) => child.stop().await,
        }
    }
}

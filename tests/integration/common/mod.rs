//! Helpers shared by the integration tests: a `tilebox server` in a temp dir, running the CLI
//! and reading its `--json` output, talking to the API directly, workflow projects and runner
//! processes, the one way to wait for something, and snapshots of CLI output.
//!
//! Layout:
//! - `mod.rs`: [`wait_until`] (every wait goes through it), [`wait_for_exit`], [`signal`],
//!   [`block_on`]
//! - `server.rs`: [`TestServer`], [`tilebox`] and [`tilebox_command`]
//! - `cli.rs`: the CLI's JSON documents: [`json_of`], [`submit`], [`job_document`],
//!   [`wait_for_job_state`], [`time_of`]
//! - `api.rs`: gRPC requests and reads: [`client`], [`job_request`], [`get_job`],
//!   [`list_tasks`], ...
//! - `project.rs`: workflow projects in temp dirs ([`project`], [`example`]) and
//!   `tilebox runner start` processes ([`RunnerProcess`])
//! - `pty.rs` (+ `pty_driver.py`): commands at a pseudo-terminal: [`pty::run_in_pty`] (a
//!   dialogue), [`pty::run_on_terminal`] (what it draws)
//! - `postgres.rs` (`tests/support/postgres.rs`, shared with the unit tests): a real
//!   PostgreSQL cluster and a fresh database per test
//! - `replicas.rs`: [`Replicas`], several `tilebox server` processes on one PostgreSQL
//!   database
//! - `http.rs`: [`http_post`], [`http_get`], [`http_request`], plain HTTP/1.1 requests
//!   (OTLP/HTTP, the console)
//! - `browser.rs`: [`browser::Browser`], a headless Chromium driven over the DevTools
//!   protocol (`--remote-debugging-pipe`), for the console's browser tests
//! - `keys.rs`: [`KeysFile`], a keys file written by `tilebox server keys`
//! - `sdk.rs`: [`sdk_python`], a venv with the official Python SDK for the interop tests
//! - `snapshot.rs`: [`snapshot_settings`] (insta filters) and [`transcript`] for CLI snapshots

mod api;
pub mod browser;
mod cli;
mod http;
mod keys;
#[path = "../../support/postgres.rs"]
pub mod postgres;
mod project;
pub mod pty;
mod replicas;
mod sdk;
mod server;
mod snapshot;

use std::fmt;
use std::future::Future;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

pub use api::{ask, client, get_job, identifier, job_request, list_tasks, task_group, uuid_of_id};
pub use cli::{job_document, json_of, stderr_of, submit, time_of, wait_for_job_state};
pub use http::{HttpResponse, http_get, http_get_url, http_post, http_request};
pub use keys::KeysFile;
pub use project::{RunnerProcess, example, project, project_runner, write_project};
pub use replicas::Replicas;
pub use sdk::sdk_python;
pub use server::{TestServer, tail_of_file, tilebox, tilebox_binary, tilebox_command};
pub use snapshot::{snapshot_settings, transcript};

/// How often [`wait_until`] checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `condition` every 20 ms until it holds, or fails after `timeout` with a [`TimedOut`]
/// that names `what` was awaited (phrase it to follow "waiting for": `"the runner to exit"`).
///
/// The one way the tests wait: on a state, a file, a log line or a process, never on a bare
/// sleep. It is synchronous because the tests are: they drive the real binary through
/// `std::process`. The few async tests (gRPC clients) poll inside the condition with
/// [`block_on`].
pub fn wait_until(
    what: impl fmt::Display,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether a release runner's `log` shows a second release loaded and then routed to: its
/// second `loaded release` line followed by `advertising the deployed releases' tasks`
/// (logged once the new catalog is published, so the next claim runs the new code).
pub fn routes_a_second_release(log: &str) -> bool {
    log.match_indices("loaded release")
        .nth(1)
        .is_some_and(|(at, _)| log[at..].contains("advertising the deployed releases' tasks"))
}

/// A [`wait_until`] condition that did not hold within its timeout. Its `Debug` is its
/// message, so `.unwrap()` panics with it.
pub struct TimedOut {
    what: String,
    timeout: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "timed out after {:?} waiting for {}",
            self.timeout, self.what
        )
    }
}

impl fmt::Debug for TimedOut {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl std::error::Error for TimedOut {}

/// Waits (with [`wait_until`]) for `child` to exit and returns its status; on a timeout the
/// child is left running, for the caller to kill.
pub fn wait_for_exit(
    child: &mut Child,
    what: impl fmt::Display,
    timeout: Duration,
) -> Result<ExitStatus, TimedOut> {
    let mut status = None;
    wait_until(what, timeout, || {
        status = child.try_wait().expect("cannot poll a child process");
        status.is_some()
    })?;
    Ok(status.expect("the child exited"))
}

/// Sends `signal` (`"-TERM"`, `"-STOP"`, ...) to process `pid` with `kill`, and asserts it was
/// delivered.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("cannot run `kill`");
    assert!(status.success(), "`kill {signal} {pid}` failed: {status}");
}

/// Runs `future` to completion from synchronous code in a multi-threaded tokio test, e.g. a
/// gRPC read inside a [`wait_until`] condition. Panics in a current-thread runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

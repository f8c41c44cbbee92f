//! A project's Python environment: `uv sync` against the interpreter this binary embeds,
//! and the venv's site-packages. Every `uv sync` runs within a timeout.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The CPython executable this binary was built against (release venvs must match it).
pub const EMBEDDED_PYTHON: Option<&str> = option_env!("TILEBOX_EMBEDDED_PYTHON");

/// What can go wrong building an environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`uv` is not installed or not on PATH")]
    UvMissing,
    #[error("`uv sync` failed in {root}:\n{output}")]
    SyncFailed { root: PathBuf, output: String },
    #[error("`uv sync` in {root} did not finish within {} s; it was stopped", timeout.as_secs_f64())]
    TimedOut { root: PathBuf, timeout: Duration },
    #[error("cannot run uv in {root}")]
    Run {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long one `uv sync` may take by default (resolving, downloading and installing a large
/// environment from a slow index takes minutes; a hung index never answers).
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// A synced environment.
#[derive(Debug, Clone)]
pub struct Environment {
    pub venv: PathBuf,
    pub site_packages: Vec<PathBuf>,
}

/// Runs `uv sync --quiet [--frozen] [extra...]` in `root` against the embedded interpreter,
/// into `environment` when given (else the project's `.venv`). Past `timeout` uv and every
/// process it started (its own process group) are killed.
fn run_uv_sync(
    root: &Path,
    frozen: bool,
    extra: &[&str],
    environment: Option<&Path>,
    timeout: Duration,
) -> Result<(), Error> {
    let mut command = Command::new("uv");
    command
        .args(["sync", "--quiet"])
        .args(extra)
        .current_dir(root)
        .env(crate::env::UV_PYTHON_DOWNLOADS, "never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(environment) = environment {
        command.env(crate::env::UV_PROJECT_ENVIRONMENT, environment);
    }
    if frozen {
        command.arg("--frozen");
    }
    if let Some(python) = EMBEDDED_PYTHON {
        command.arg("--python").arg(python);
    }
    let run_failed = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => Error::UvMissing,
        _ => Error::Run {
            root: root.to_path_buf(),
            source,
        },
    };
    let mut child = command.spawn().map_err(run_failed)?;
    let group = child.id();
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_end(&mut text);
        }
        text
    });
    // `wait` blocks, so it waits on its own thread and this one waits with a deadline.
    let (sender, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    let status = match exited.recv_timeout(timeout) {
        Ok(status) => status.map_err(run_failed)?,
        Err(_) => {
            kill_group(group);
            let _ = exited.recv();
            // The reader is left to end with the pipe: a process that left uv's group may
            // hold it open.
            return Err(Error::TimedOut {
                root: root.to_path_buf(),
                timeout,
            });
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::SyncFailed {
            root: root.to_path_buf(),
            output: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Kills the process group `group` (uv and whatever it started: builds, interpreters).
fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    // SAFETY: a plain signal to a process group this process created.
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

/// Runs `uv sync` in `root` (which has a `pyproject.toml`), with `--frozen` when asked,
/// against the embedded interpreter, within `timeout`; answers the venv.
pub fn sync(root: &Path, frozen: bool, timeout: Duration) -> Result<Environment, Error> {
    run_uv_sync(root, frozen, &[], None, timeout)?;
    let venv = root.join(".venv");
    Ok(Environment {
        site_packages: site_packages_of(&venv),
        venv,
    })
}

/// The site-packages directories of a venv (`lib/python3.X/site-packages`).
pub fn site_packages_of(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs_err::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("site-packages"))
        .filter(|path| path.is_dir())
        .collect();
    found.sort();
    found
}

/// Runs `uv sync --frozen --no-install-project` for the project in `root` into a venv under
/// `cache/venvs/` keyed by the hash of its `uv.lock` and the Python version, so releases with
/// the same lock file share one environment and a redeploy builds nothing. The project's own
/// code is imported from `root`, not installed. The sync runs within `timeout`.
pub fn sync_shared(root: &Path, cache: &Path, timeout: Duration) -> Result<Environment, Error> {
    use sha2::{Digest, Sha256};
    let lock = fs_err::read(root.join("uv.lock")).unwrap_or_default();
    let pyproject = fs_err::read(root.join("pyproject.toml")).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(&lock);
    hasher.update(&pyproject);
    let hash = hex::encode(&hasher.finalize()[..12]);
    let version = EMBEDDED_PYTHON
        .unwrap_or("python3")
        .rsplit('/')
        .next()
        .unwrap_or("python3")
        .to_string();
    let venv = cache
        .join("venvs")
        .join(format!("{hash}-{}", version.replace('/', "_")));
    if venv.join(".complete").exists() {
        return Ok(Environment {
            site_packages: site_packages_of(&venv),
            venv,
        });
    }
    run_uv_sync(
        root,
        !lock.is_empty(),
        &["--no-install-project"],
        Some(&venv),
        timeout,
    )?;
    let _ = fs_err::write(venv.join(".complete"), b"");
    Ok(Environment {
        site_packages: site_packages_of(&venv),
        venv,
    })
}
